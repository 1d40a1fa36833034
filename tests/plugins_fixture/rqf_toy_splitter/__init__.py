"""A third-party plugin, written against what ``rqf`` exports and ``rqf.codes`` alone: an
every-nth splitter and a sign-projection tokenizer built on ``rqf.codes.ItemTokenizer``."""

import json
from pathlib import Path

import numpy as np

import rqf
from rqf.codes import CodedItems, ItemTokenizer


class EveryNthSplitter(rqf.Splitter):
    """Every nth sample goes to test, the rest to train."""

    name = "toy_every_nth"
    params = (rqf.Param("n", int, 5, "test takes samples at positions divisible by n", min=2),)

    def split(self, dataset):
        positions = np.arange(len(dataset))
        test = positions % self.config["n"] == 0
        self.report = {"splitter": self.name, "counts": {"train": int((~test).sum()),
                                                         "test": int(test.sum())}}
        return {"train": dataset.subset(positions[~test], "train"),
                "test": dataset.subset(positions[test], "test")}


class SignCodes(ItemTokenizer):
    """Semantic IDs from the signs of random projections of the centred vectors."""

    name = "toy_sign_codes"
    gradient_free = True
    params = (rqf.Param("levels", int, 2, "code levels", min=1),
              rqf.Param("codebook_size", int, 8, "codes per level, a power of two", min=2,
                        max=4096))

    def __init__(self, data_info, **params):
        super().__init__(data_info, **params)
        size, levels = self.config["codebook_size"], self.config["levels"]
        if size & (size - 1):
            raise rqf.ConfigError(f"model.codebook_size: expected a power of two, got {size}")
        self.input_dim = self.data_info["input_dim"]
        self.bits = size.bit_length() - 1
        self.projection = np.random.default_rng(0).normal(size=(self.input_dim, levels * self.bits))
        self.mean = np.zeros(self.input_dim)

    def fit(self, train, valid, ctx):
        self.mean = np.asarray(train.vectors(), np.float64).mean(axis=0)
        return {"training_vectors": len(train)}

    def code_rows(self, read, n, unique=True):
        bits = (np.asarray(read(0, n)) - self.mean) @ self.projection > 0
        codes = bits.reshape(n, self.config["levels"], -1) @ 2 ** np.arange(self.bits)
        return CodedItems(None, codes, codes, {})  # the extra level tells sharing items apart

    def save(self, path):
        with rqf.atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps({"config": self.config, "data_info": self.data_info,
                                             "mean": self.mean.tolist()}))

    @classmethod
    def load(cls, path, device="auto"):
        saved = json.loads(Path(path).read_text())
        model = cls(saved["data_info"], **saved["config"])
        model.mean = np.asarray(saved["mean"])
        return model


@rqf.hookimpl
def register_splitters(register):
    register(EveryNthSplitter)


@rqf.hookimpl
def register_models(register):
    register(SignCodes)
