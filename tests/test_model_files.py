"""One model file for every model: the same payload, the same device rule, the same refusal
for a state that does not fit its configuration (``rqf.training.save_model_file``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rqf
from rqf.codes import write_semantic_ids
from rqf.testing import needs
from rqf.training import load_tensors

ITEMS = np.arange(1, 41)


def _rqvae(tmp_path):
    from rqf_rqvae.model import RQVAEModel

    return RQVAEModel({"input_dim": 16, "unit": "item"}, levels=2, codebook_size=8,
                      latent_dim=4, hidden_dims=[8])


def _rqkmeans(tmp_path):
    from rqf_rqkmeans.model import RQKMeansModel

    model = RQKMeansModel({"input_dim": 16, "unit": "item", "n_items": 40}, levels=2,
                          codebook_size=8)
    model.codebooks = torch.randn_like(model.codebooks)
    return model


def _tiger(tmp_path):
    from rqf_tiger import TigerModel

    codes = np.stack([ITEMS % 4, ITEMS // 4 % 4, ITEMS // 16], 1)
    ids = write_semantic_ids(tmp_path / "semantic_ids.h5", ITEMS, codes, None,
                             {"levels": 3, "codebook_size": 4})
    return TigerModel({}, semantic_ids=str(ids), d_model=8, heads=2, layers=1, ff=16, beam=10)


def _sasrec(tmp_path):
    from rqf_tiger import SASRecModel

    model = SASRecModel({}, d_model=8, heads=2, layers=1)
    model.set_catalogue(ITEMS)
    return model


SHIPPED = [pytest.param(_rqvae, marks=needs("rqf_rqvae"), id="rqvae"),
           pytest.param(_rqkmeans, marks=needs("rqf_rqkmeans"), id="rqkmeans"),
           pytest.param(_tiger, marks=needs("rqf_tiger"), id="tiger"),
           pytest.param(_sasrec, marks=needs("rqf_tiger"), id="sasrec")]


@pytest.mark.parametrize("make", SHIPPED)
def test_every_model_file_holds_format_config_data_and_state_and_loads_the_same(make, tmp_path):
    model = make(tmp_path)
    path = tmp_path / "model.pt"
    model.save(path)
    payload = load_tensors(path, "model", model.file_format)
    assert set(payload) == {"format", "config", "data_info", *model.state()}
    assert payload["data_info"] == model.data_info
    again = type(model).load(path, device="cpu")
    assert again.config == {k: str(v) if hasattr(v, "__fspath__") else v
                            for k, v in model.config.items()}
    for key, value in model.state().items():
        saved = again.state()[key]
        if isinstance(value, dict):  # a network's state_dict
            assert value.keys() == saved.keys()
            for name in value:
                torch.testing.assert_close(saved[name], value[name])
        elif isinstance(value, torch.Tensor):
            torch.testing.assert_close(saved, value)
        else:
            assert saved == value


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
@pytest.mark.parametrize("make", SHIPPED)
def test_every_model_refuses_cuda_without_a_device_in_the_same_line(make, tmp_path):
    model = make(tmp_path)
    model.save(tmp_path / "model.pt")
    with pytest.raises(rqf.RqfError) as caught:
        type(model).load(tmp_path / "model.pt", device="cuda")
    assert str(caught.value) == "device: 'cuda' was asked for, but no CUDA device is available"


@pytest.mark.parametrize("make", SHIPPED)
def test_a_state_that_does_not_fit_the_config_is_refused_in_the_same_words(make, tmp_path):
    model = make(tmp_path)
    path = tmp_path / "model.pt"
    model.save(path)
    payload = load_tensors(path, "model")
    # the first tensor of the state, one row short: what a hand-edited or mixed-up file holds
    key = next(k for k, v in payload.items() if isinstance(v, (dict, torch.Tensor))
               and k not in ("config", "data_info"))
    if isinstance(payload[key], dict):
        name = next(iter(payload[key]))
        payload[key][name] = payload[key][name][:-1]
    else:
        payload[key] = payload[key][:-1]
    torch.save(payload, path)
    with pytest.raises(rqf.RqfError, match=r"model.pt: the saved state does not fit the saved "
                                           r"configuration \("):
        type(model).load(path, device="cpu")


@needs("rqf_tiger")
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_ranker_loaded_on_cuda_ranks_there(tmp_path):
    model = _sasrec(tmp_path)
    model.save(tmp_path / "model.pt")
    again = type(model).load(tmp_path / "model.pt", device="cuda")
    assert next(again.net.parameters()).device.type == "cuda"
    assert again.recommend_histories([[1, 2, 3]], k=5).shape == (1, 5)
