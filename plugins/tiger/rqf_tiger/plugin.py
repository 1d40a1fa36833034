"""Hook implementations of the tiger plugin."""

from rqf import hookimpl
from rqf_tiger.genret import GenretModel
from rqf_tiger.model import TigerModel
from rqf_tiger.sasrec import SASRecModel


@hookimpl
def register_models(register):
    register(TigerModel)
    register(SASRecModel)
    register(GenretModel)
