"""Hook implementations of the h5_speech plugin."""

from rqf import hookimpl
from rqf_h5_speech.datasets import SpeechFramesDataset, UtterancesDataset
from rqf_h5_speech.splitters import SpeakerSplitter
from rqf_h5_speech.storage import H5ShardedStorage


@hookimpl
def register_storages(register):
    register(H5ShardedStorage)


@hookimpl
def register_datasets(register):
    register(UtterancesDataset)
    register(SpeechFramesDataset)


@hookimpl
def register_splitters(register):
    register(SpeakerSplitter)


@hookimpl
def register_commands(cli):
    from rqf_h5_speech.commands import speech

    cli.add_command(speech)


@hookimpl
def check_demo_data(directory, force):
    from pathlib import Path

    from rqf_h5_speech.demo import check_demo

    check_demo(Path(directory) / "speech")


@hookimpl
def write_demo_data(directory, seed):
    from pathlib import Path

    from rqf_h5_speech.demo import make_demo

    return make_demo(Path(directory) / "speech", seed=seed)
