"""Hook implementations of the rqvae plugin."""

from rqf import hookimpl
from rqf_rqvae.model import RQVAEModel


@hookimpl
def register_models(register):
    register(RQVAEModel)


@hookimpl
def register_commands(cli):
    from rqf_rqvae.commands import rqvae

    if "encode" in cli.commands:  # the model-agnostic command, under its former name too
        rqvae.add_command(cli.commands["encode"], "encode")
    cli.add_command(rqvae)
