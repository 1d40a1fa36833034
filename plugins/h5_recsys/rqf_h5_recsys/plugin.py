"""Hook implementations of the h5_recsys plugin."""

from rqf import hookimpl
from rqf_h5_recsys.datasets import ItemsDataset, SequencesDataset
from rqf_h5_recsys.splitters import AutoSplitter, LeaveLastOutSplitter, TemporalSplitter
from rqf_h5_recsys.storage import H5RecsysStorage


@hookimpl
def register_storages(register):
    register(H5RecsysStorage)


@hookimpl
def register_datasets(register):
    register(ItemsDataset)
    register(SequencesDataset)


@hookimpl
def register_splitters(register):
    register(LeaveLastOutSplitter)
    register(TemporalSplitter)
    register(AutoSplitter)


@hookimpl
def register_commands(cli):
    from rqf_h5_recsys.commands import recsys

    cli.add_command(recsys)


@hookimpl
def check_demo_data(directory, force):
    from pathlib import Path

    from rqf_h5_recsys.demo import check_demo

    check_demo(Path(directory) / "recsys", force)


@hookimpl
def write_demo_data(directory, seed):
    from pathlib import Path

    from rqf_h5_recsys.demo import make_demo

    return make_demo(Path(directory) / "recsys", seed=seed)
