"""Hook implementations of the rqkmeans plugin."""

from rqf import hookimpl
from rqf_rqkmeans.model import RQKMeansModel


@hookimpl
def register_models(register):
    register(RQKMeansModel)
