"""The paper's comparisons in the analysis: Table 1's MONet row filled by MONet runs; Fig. 11 (Appendix
B.1), the leak share of a traversal by hand and the comparison figure drawn from tiny real models of
EfficientMORL and GENESIS on the textured Multi-dSprites."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analysis import figures
from analysis.aggregate import flag_runs
from analysis.collect import RunSelection, collect_runs
from analysis.examples import emorl_tags, log_run
from analysis.settings import setting_params
from analysis.tables import TABLE1, table_lines
from emorl.models import build_model
from emorl.models.decoder import DecoderOutput
from emorl.models.sequential import stick_breaking


def test_table1_monet_row_takes_monet_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the empty store the conftest made
    client = MlflowClient(uri)
    experiment = client.create_experiment("rows", artifact_location=(tmp_path / "artifacts").as_uri())
    for seed, ari in enumerate([0.94, 0.96]):
        log_run(client, experiment, tags=emorl_tags("monet_clevr6", "default", seed, "monet", "clevr6"),
                params=setting_params("monet_clevr6"), metrics={"test/fg_ari": ari})
    runs = flag_runs(collect_runs(RunSelection(experiment="rows"), uri), ["test/fg_ari"])
    lines = table_lines(TABLE1, runs)
    monet = lines[(lines["row"] == "MONet") & (lines["dataset"] == "CLEVR6") & (lines["runs"] == "all")].iloc[0]
    assert (monet["n"], monet["mean"], monet["paper_mean"]) == (2, pytest.approx(95.0), 96.2)
    assert lines[(lines["row"] == "MONet") & (lines["dataset"] == "Tetrominoes")].empty  # no number anywhere


class HalvesModel:
    """Slot 0 owns the left half, slot 1 the right half; z_k[0] sets slot k's gray level."""

    def decode(self, codes):
        batch = codes.shape[0]
        left = torch.zeros(1, 1, 4, 4)
        left[..., :2] = 1.0
        masks = torch.stack([left, 1 - left], dim=1).expand(batch, 2, 1, 4, 4)
        rgb = torch.sigmoid(codes[:, :, :1, None, None]).expand(batch, 2, 3, 4, 4)
        return DecoderOutput(rgb, masks.clamp_min(1e-12).log())


class OrderedModel(HalvesModel):
    """Stick-breaking: slot 0's logit z_0[1] is the same at every pixel, so it sets every pixel's scope."""

    def decode(self, codes):
        batch = codes.shape[0]
        logits = codes[:, :, 1, None, None, None].expand(batch, 2, 1, 4, 4)
        rgb = torch.sigmoid(codes[:, :, :1, None, None]).expand(batch, 2, 3, 4, 4)
        return DecoderOutput(rgb, stick_breaking(logits))


def test_leak_share_by_hand():
    scene = torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    values = torch.tensor([-1.0, 1.0])
    images, share, change = figures.traversal_leakage(HalvesModel(), scene, slot=0, dim=0, values=values, device="cpu")
    assert images.shape == (2, 3, 4, 4) and share == 0.0  # only slot 0's half changes
    expected = 3 * 8 * (abs(torch.sigmoid(torch.tensor(-1.0)) - 0.5) + abs(torch.sigmoid(torch.tensor(1.0)) - 0.5))
    assert change == pytest.approx(float(expected) / (2 * 16))
    # Ordered: slot 0 takes sigmoid(z_0[1]) of every pixel's scope. At z = 3 it holds every pixel (region:
    # everywhere, nothing leaks); traversed to -3 it lets slot 1 show through everywhere.
    _, share, _ = figures.traversal_leakage(OrderedModel(), scene, slot=0, dim=1, values=torch.tensor([-3.0]),
                                            device="cpu")
    assert share == 0.0
    scene[0, 1] = -3.0  # slot 0 now holds no pixel; raising its logit takes over pixels slot 1 had
    _, share, _ = figures.traversal_leakage(OrderedModel(), scene, slot=0, dim=1, values=torch.tensor([-1.0]),
                                            device="cpu")
    assert share == 1.0  # the change is all outside slot 0's (empty) region: it leaked into the scene


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    from emorl.data.generate.common import generate
    from emorl.data.hdf5 import MultiObjectDataset

    path = generate("multi_dsprites_textured", tmp_path_factory.mktemp("data") / "textured.h5", seed=0,
                    sizes={"train": 0, "test": 8}, workers=1, progress=False)
    return MultiObjectDataset(path, "test", 16)


def test_traversal_comparison_of_emorl_and_genesis(textured, tmp_path):
    torch.manual_seed(0)
    models = {
        "efficient_morl": build_model({"name": "efficient_morl", "image_size": 16, "num_slots": 3, "latent_dim": 4,
                                       "encoder_channels": 8, "decoder": "broadcast_light"}),
        "genesis": build_model({"name": "genesis", "image_size": 16, "num_slots": 3, "mask_latent_dim": 4,
                                "component_latent_dim": 2, "hidden": 16, "mask_encoder_channels": [4] * 5,
                                "mask_decoder_channels": [4] * 5, "component_encoder_channels": [4] * 4,
                                "component_decoder_channels": 4}),
    }
    loaded, rows = {}, []
    for index, (name, model) in enumerate(models.items()):
        model.eval()
        run_id = f"run{index}"
        loaded[run_id] = figures.LoadedRun(model, {"curriculum": {"test_refine_steps": 1}}, textured)
        rows.append({"run_id": run_id, "experiment": f"{name}_textured", "variant": "default", "seed": 0,
                     "model": name, "dataset": "multi_dsprites_textured"})
    figure = figures.traversal_comparison(pd.DataFrame(rows), None, tmp_path, num_images=8, num_values=4,
                                          loaded=loaded)
    data = figure.data.set_index("model")
    assert data.loc["genesis", "slot"] == 0 and data.loc["genesis", "slot_choice"] == "the first component"
    assert 0 <= data.loc["efficient_morl", "slot"] < 3
    assert data["leak_share"].between(0, 1).all() and (data["low"] <= data["high"]).all()
    assert data.loc["genesis", "dim"] < 4 + 2 and data.loc["efficient_morl", "dim"] < 4
    assert all(path.stat().st_size > 5_000 for path in figure.paths) and "genesis" in figure.caption
    with pytest.raises(figures.MissingData):
        figures.traversal_comparison(pd.DataFrame(), None, tmp_path)
