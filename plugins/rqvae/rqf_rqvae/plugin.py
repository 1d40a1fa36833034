"""Hook implementations of the rqvae plugin."""

from rqf import hookimpl
from rqf_rqvae.model import RQVAEModel


@hookimpl
def register_models(register):
    register(RQVAEModel)


@hookimpl
def register_commands(cli):
    from rqf_rqvae.commands import rqvae

    # the model-agnostic commands, under their former names too
    if "encode" in cli.commands:
        rqvae.add_command(cli.commands["encode"], "encode")
    if "ids" in cli.commands:
        rqvae.add_command(cli.commands["ids"].commands["lookup"], "lookup")
    cli.add_command(rqvae)
