"""A third-party plugin, written against what ``rqf`` exports and ``rqf.codes`` alone: an
every-nth splitter and a sign-projection tokenizer that exports semantic IDs."""

import json
from pathlib import Path

import numpy as np

import rqf
from rqf.codes import code_statistics, handle_collisions, write_semantic_ids


class EveryNthSplitter(rqf.Splitter):
    """Every nth sample goes to test, the rest to train."""

    name = "every_nth"
    params = (rqf.Param("n", int, 5, "test takes samples at positions divisible by n", min=2),)

    def split(self, dataset):
        positions = np.arange(len(dataset))
        test = positions % self.config["n"] == 0
        self.report = {"splitter": self.name, "counts": {"train": int((~test).sum()),
                                                         "test": int(test.sum())}}
        return {"train": dataset.subset(positions[~test], "train"),
                "test": dataset.subset(positions[test], "test")}


class SignCodes(rqf.Model):
    """Semantic IDs from the signs of random projections of the centred vectors."""

    name = "sign_codes"
    gradient_free = True
    params = (rqf.Param("levels", int, 2, "code levels", min=1),
              rqf.Param("bits", int, 3, "projections per level: 2**bits codes", min=1, max=12))

    def __init__(self, data_info, **params):
        super().__init__(data_info, **params)
        dim, c = self.data_info["input_dim"], self.config
        rng = np.random.default_rng(0)
        self.projection = rng.normal(size=(dim, c["levels"] * c["bits"]))
        self.mean = np.zeros(dim)

    def fit(self, train, valid, ctx):
        self.mean = np.asarray(train.vectors(), np.float64).mean(axis=0)
        return {"training_vectors": len(train)}

    def codes_of(self, vectors):
        bits = (np.asarray(vectors) - self.mean) @ self.projection > 0
        weights = 2 ** np.arange(self.config["bits"])
        return bits.reshape(len(bits), self.config["levels"], -1) @ weights

    def evaluate(self, data):
        return code_statistics(self.codes_of(data.vectors()), 2 ** self.config["bits"])

    def _write(self, source, path):
        codes = self.codes_of(source.read(0, len(source.ids)))
        return write_semantic_ids(path, source.ids, handle_collisions(codes, None, "suffix"),
                                  None, {"codebook_size": 2 ** self.config["bits"],
                                         "tokenizer": self.name})

    @classmethod
    def run_outputs(cls, export):
        return ("semantic_ids.h5",)

    def export(self, dataset, ctx):
        return {"semantic_ids": str(self._write(dataset.export_source(),
                                                ctx.run_dir / "semantic_ids.h5"))}

    def encode(self, dataset, out):
        return self._write(dataset.export_source(), out)

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
