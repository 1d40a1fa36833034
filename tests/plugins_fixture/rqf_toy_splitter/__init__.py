"""A third-party plugin: puts every nth sample into the test split."""

import numpy as np

import rqf


class EveryNthSplitter(rqf.Splitter):
    """Every nth sample goes to test, the rest to train."""

    name = "every_nth"
    params = (rqf.Param("n", int, 5, "test takes samples at positions divisible by n", min=2),)

    def split(self, dataset):
        positions = np.arange(len(dataset))
        test = positions % self.config.get("n", 5) == 0
        self.report = {"splitter": self.name, "counts": {"train": int((~test).sum()),
                                                         "test": int(test.sum())}}
        return {"train": dataset.subset(positions[~test], "train"),
                "test": dataset.subset(positions[test], "test")}


@rqf.hookimpl
def register_splitters(register):
    register(EveryNthSplitter)
