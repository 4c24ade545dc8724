"""Multi-LoRA merging, checked against the formula h = W x + sum_i w_i (alpha_i / r_i) B_i A_i x."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stylemix import params
from stylemix.adapters import block_weights
from stylemix.adapters.loading import load_factors
from stylemix.adapters.lora_files import add_lora, save_lora
from stylemix.adapters.schedules import Mix
from stylemix.errors import StyleMixError
from stylemix.mixing.merging import combo_multipliers, merge_combo
from stylemix.models.base_model import load_pipeline
from tests.conftest import ROOT


def random_lora(tiny_model, folder, rank, alpha, text_encoder, seed, base_model="tiny", **lora):
    pipe = load_pipeline(str(tiny_model))
    torch.manual_seed(seed)
    add_lora(pipe.unet, [pipe.text_encoder], params.Lora(rank=rank, alpha=alpha, text_encoder=text_encoder, **lora))
    for module in (pipe.unet, pipe.text_encoder):
        for name, weight in module.named_parameters():
            if "lora_B" in name or "hada_" in name or "lokr_" in name:
                weight.data.normal_(0, 0.2)  # a trained-looking, non-zero update
            elif "lora_magnitude_vector" in name:  # a DoRA's, away from the base's norms
                weight.data *= 1 + 0.2 * torch.randn_like(weight)
    save_lora(folder, folder.name, pipe,
              {"trigger": f"{folder.name}style", "base_model": base_model, "resolution": 32})
    return pipe


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("loras")
    (root / "ink").mkdir(), (root / "clay").mkdir()
    random_lora(tiny_model, root / "ink", rank=4, alpha=2, text_encoder=True, seed=1)
    # clay is a LoCon: its ResNet convolutions at another rank and alpha, layers ink does not have
    random_lora(tiny_model, root / "clay", rank=2, alpha=4, text_encoder=False, seed=2, conv_rank=3, conv_alpha=6)
    return root


WEIGHTS = {"ink": 0.6, "clay": 0.4}


def delta(factors, module):
    a, b, scale = factors[module]
    return scale * b.flatten(1) @ a.flatten(1)


@pytest.mark.parametrize("method", [{"method": "linear"}, {"method": "svd", "rank": 6}])
def test_merged_layers_equal_the_weighted_sum(loras, tmp_path, method):
    merge_combo("mix", params.Combo(weights=WEIGHTS, **method), loras, tmp_path)
    merged = load_factors(tmp_path / "mix")
    parts = {s: load_factors(loras / s) for s in WEIGHTS}
    torch.manual_seed(0)
    modules = sorted(merged["unet"])
    convs = [m for m in modules if m.endswith((".conv1", ".conv2"))]  # clay's alone
    assert modules == sorted(set(parts["ink"]["unet"]) | set(parts["clay"]["unet"])) and len(modules) > len(convs) > 8
    for module in modules[::5] + convs[:2] + ["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"]:
        x = torch.randn(3, delta(merged["unet"], module).shape[1])
        expected = sum(w * x @ delta(parts[s]["unet"], module).T for s, w in WEIGHTS.items() if module in parts[s]["unet"])
        assert torch.allclose(x @ delta(merged["unet"], module).T, expected, atol=1e-5), module
    if method["method"] == "linear":  # each layer at the sum of its styles' ranks: 4 + 2 on attention, clay's 3 on convolutions
        assert {merged["unet"][m][0].shape[0] for m in convs} == {3} and merged["unet"][modules[0]][0].shape[0] == 6
    # Only ink adapted the text encoder: the merge keeps its 0.6-weighted update there.
    module = next(iter(merged["text_encoder"]))
    assert torch.allclose(delta(merged["text_encoder"], module), 0.6 * delta(parts["ink"]["text_encoder"], module), atol=1e-5)


def test_merged_file_equals_diffusers_set_adapters(loras, tmp_path, tiny_model):
    merge_combo("mix", params.Combo(weights=WEIGHTS), loras, tmp_path)
    merged = load_pipeline(str(tiny_model))
    merged.load_lora_weights(tmp_path / "mix")
    separate = load_pipeline(str(tiny_model))
    for style in WEIGHTS:
        separate.load_lora_weights(loras / style, adapter_name=style)
    separate.set_adapters(list(WEIGHTS), list(WEIGHTS.values()))
    torch.manual_seed(0)
    x, t, ids = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.randint(0, 49407, (2, 77))
    with torch.no_grad():
        for pipe in (merged, separate):
            pipe.out = pipe.unet(x, t, pipe.text_encoder(ids)[0]).sample
    assert torch.allclose(merged.out, separate.out, atol=1e-5)
    base = load_pipeline(str(tiny_model))
    with torch.no_grad():
        assert (base.unet(x, t, base.text_encoder(ids)[0]).sample - merged.out).abs().max() > 1e-3


def test_low_rank_svd_approximates_and_dare_is_seeded(loras, tmp_path):
    merge_combo("low", params.Combo(weights=WEIGHTS, method="svd", rank=1), loras, tmp_path)
    assert next(iter(load_factors(tmp_path / "low")["unet"].values()))[0].shape[0] == 1
    for run in ("a", "b"):
        merge_combo(run, params.Combo(weights=WEIGHTS, method="dare_linear", density=0.5, seed=3), loras, tmp_path)
    a, b = load_factors(tmp_path / "a")["unet"], load_factors(tmp_path / "b")["unet"]
    assert all(torch.equal(a[m][0], b[m][0]) for m in a)
    ties = params.Combo(weights=WEIGHTS, method="ties", density=0.5)
    assert merge_combo("t", ties, loras, tmp_path)["method"] == "ties"


@pytest.mark.parametrize("method", ["linear", "svd"])
def test_a_dora_merges_by_its_full_update(loras, tmp_path, tiny_model, capsys, method):
    """A DoRA style (its update rescales the base weight's rows: not low-rank) with a plain one: the
    merge adds the full updates W' - W; at a rank that holds them (the tiny model's layers are at
    most 64 wide) it is exact, and the files pass the load check. linear says it merges by svd."""
    from stylemix.adapters.dora import delta as dora_delta
    from stylemix.adapters.loading import load_magnitudes
    from stylemix.adapters.lora_files import update

    random_lora(tiny_model, loras / "wash", rank=2, alpha=2, text_encoder=False, seed=3, type="dora", conv_rank=2)
    base, weights = load_pipeline(str(tiny_model)), {"ink": 0.6, "wash": 0.5}
    info = merge_combo("mix", params.Combo(weights=weights, method=method, rank=64), loras, tmp_path, check_with=base)
    assert ("linear merge is svd at the sum of the styles' ranks" in capsys.readouterr().out) == (method == "linear")
    merged, ink, wash = load_factors(tmp_path / "mix"), load_factors(loras / "ink"), load_factors(loras / "wash")
    magnitudes = load_magnitudes(loras / "wash")["unet"]
    assert load_magnitudes(tmp_path / "mix") == {} and set(magnitudes) == set(wash["unet"])  # a plain LoRA comes out
    for module in sorted(merged["unet"])[::7]:
        full = dora_delta(base.unet.get_submodule(module).weight, update(*wash["unet"][module]), magnitudes[module])
        expected = 0.5 * full + (0.6 * delta(ink["unet"], module) if module in ink["unet"] else 0)
        if method == "linear":  # the best approximation at the sum of the ranks, 4 + 2 (conv: wash's 2)
            u, sv, vh = torch.linalg.svd(expected, full_matrices=False)
            k = merged["unet"][module][0].shape[0]
            expected = u[:, :k] @ torch.diag(sv[:k]) @ vh[:k]
        assert torch.allclose(delta(merged["unet"], module), expected, atol=1e-5), module
    rank = {m: a.shape[0] for m, (a, _, _) in merged["unet"].items()}
    assert set(rank.values()) == ({6, 2} if method == "linear" else {64}) and info["method"] == "svd"
    with pytest.raises(StyleMixError, match=r"merge.combos.mix2: wash is a DoRA, whose update depends on the base weights"):
        merge_combo("mix2", params.Combo(weights=weights), loras, tmp_path)


@pytest.mark.parametrize("method", ["linear", "svd"])
def test_loha_and_lokr_merge_by_their_full_updates(loras, tmp_path, tiny_model, capsys, method):
    """A LoHa (with LoCon convolutions) and a LoKr with a plain LoRA: the merge adds their full products
    (stylemix.adapters.lycoris), exact at a rank that holds them; the result is a LoRA that passes the load check."""
    from stylemix.adapters import lycoris
    from stylemix.adapters.loading import lycoris_layers, weights_file
    from stylemix.adapters.lora_files import module_alpha, module_rank

    random_lora(tiny_model, loras / "hada", rank=2, alpha=1, text_encoder=False, seed=4, type="loha", conv_rank=2)
    random_lora(tiny_model, loras / "kron", rank=2, alpha=4, text_encoder=False, seed=5, type="lokr")
    base, weights = load_pipeline(str(tiny_model)), {"ink": 0.6, "hada": 0.5, "kron": 0.3}
    info = merge_combo("mix", params.Combo(weights=weights, method=method, rank=64), loras, tmp_path, check_with=base)
    said = capsys.readouterr().out
    assert ("hada (loha), kron (lokr): not low-rank" in said) == (method == "linear") and info["method"] == "svd"
    merged, ink, full = load_factors(tmp_path / "mix"), load_factors(loras / "ink"), {}
    for style in ("hada", "kron"):
        _, config, layers = lycoris_layers(weights_file(loras / style))
        full[style] = {m: lycoris.delta(t, module_alpha(config, m) / module_rank(config, m)) for m, t in layers.items()}
    assert any(m.endswith("conv1") for m in merged["unet"]) and set(full["hada"]) <= set(merged["unet"])
    for module in sorted(merged["unet"])[::5]:
        expected = sum(weights[s] * full[s][module] for s in full if module in full[s])
        expected = expected + (0.6 * delta(ink["unet"], module) if module in ink["unet"] else 0)
        if method == "linear":  # the best approximation at the sum of the ranks
            u, sv, vh = torch.linalg.svd(expected, full_matrices=False)
            k = merged["unet"][module][0].shape[0]
            expected = u[:, :k] @ torch.diag(sv[:k]) @ vh[:k]
        assert torch.allclose(delta(merged["unet"], module), expected, atol=1e-5), module
    with pytest.raises(StyleMixError, match=r"merge.combos.mix2: hada is a loha, whose layer shapes come from the base model"):
        merge_combo("mix2", params.Combo(weights=weights), loras, tmp_path)
    # A LoHa for other layers (another model's, or none), or for other shapes: one line naming its file.
    path = loras / "hada/pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for broken, said in (({k.replace("down_blocks", "side_blocks"): t for k, t in tensors.items()}, "no layer side_blocks"),
                         ({k: t.repeat(2, 1) if k.endswith(("hada_w1_a", "hada_w2_a")) and t.dim() == 2 else t for k, t in tensors.items()}, r"is \(\d+, \d+\) in the base")):
        save_file(broken, path, metadata)
        with pytest.raises(StyleMixError, match=f"{path}: this base model has no layers it fits \\(.*{said}"):
            merge_combo("mix3", params.Combo(weights=weights, method=method, rank=64), loras, tmp_path, check_with=base)
    save_file(tensors, path, metadata)


def test_weights_above_one_warn_and_missing_lora_is_named(loras, tmp_path, capsys):
    merge_combo("loud", params.Combo(weights={"ink": 0.8, "clay": 0.7}), loras, tmp_path)
    assert "weights sum to 1.5 > 1" in capsys.readouterr().out
    with pytest.raises(StyleMixError, match=r"ghost/pytorch_lora_weights.safetensors missing: train the LoRA first"):
        merge_combo("x", params.Combo(weights={"ink": 0.5, "ghost": 0.5}), loras, tmp_path)


def test_block_weights_follow_lbw_counts_on_the_real_unets():
    """LBW's vectors are BASE + one number per attention layer: 17 for SD 1.5, 12 for SDXL."""
    for arch, count in (("sd15", 17), ("sdxl", 12)):
        layers = block_weights.attention_layers(block_weights.unet_config(ROOT / "stylemix/configs" / arch))
        assert 1 + len(layers) == count
    sd15 = block_weights.attention_layers(block_weights.unet_config(ROOT / "stylemix/configs/sd15"))
    outs = block_weights.multipliers("OUTS", sd15, "k")  # LBW's OUTS: BASE and the last five up attentions
    assert [layer for layer, m in outs.items() if m] == ["text_encoder"] + sd15[-5:]
    with pytest.raises(StyleMixError, match=r"k: 3 numbers, but this UNet takes 17"):
        block_weights.multipliers([1, 0, 1], sd15, "k")
    with pytest.raises(StyleMixError, match=r"k = 'OUTSIDE': no such LBW preset"):
        block_weights.multipliers("OUTSIDE", sd15, "k")
    with pytest.raises(StyleMixError, match=r"k.up.block_1: 2 numbers for its 3 attention layers"):
        block_weights.multipliers({"up": {"block_1": [1, 0]}}, sd15, "k")


BLOCKS = {"ink": {"text_encoder": 0.5, "down": 0.0, "mid": 2.0, "up": {"block_1": [1.0, 0.25]}},
          "clay": [1, 0.5, 1, 0, 1, 1, 0, 2]}  # an LBW vector: BASE + the tiny UNet's 7 attention layers


def test_block_weighted_merge_is_the_per_block_weighted_sum_and_what_diffusers_draws(loras, tmp_path, tiny_model):
    combo = params.Combo(weights=WEIGHTS, blocks=BLOCKS)
    merge_combo("blocky", combo, loras, tmp_path, base_dir=tiny_model)
    merged, parts = load_factors(tmp_path / "blocky"), {s: load_factors(loras / s) for s in WEIGHTS}
    mults = combo_multipliers("blocky", combo, tiny_model)
    assert mults["ink"]["down_blocks.1.attentions.0"] == 0 and mults["ink"]["up_blocks.1.attentions.1"] == 0.25
    assert mults["clay"]["mid_block.attentions.0"] == 0 and mults["clay"]["up_blocks.1.attentions.1"] == 2
    for module in merged["unet"]:
        layer = ".".join(module.split(".")[:4]) if not module.startswith("mid_block") else ".".join(module.split(".")[:3])
        # clay's ResNet convolutions are in no attention layer: they keep the style's whole weight
        expected = sum(w * mults[s].get(layer, 1.0) * delta(parts[s]["unet"], module) for s, w in WEIGHTS.items()
                       if module in parts[s]["unet"])
        assert torch.allclose(delta(merged["unet"], module), expected, atol=1e-5), module
    module = next(iter(merged["text_encoder"]))
    assert torch.allclose(delta(merged["text_encoder"], module), 0.6 * 0.5 * delta(parts["ink"]["text_encoder"], module), atol=1e-5)
    # Drawing the styles live with diffusers' block scales gives the merged file's outputs.
    baked = load_pipeline(str(tiny_model))
    baked.load_lora_weights(tmp_path / "blocky")
    live = load_pipeline(str(tiny_model))
    for style in WEIGHTS:
        live.load_lora_weights(loras / style, adapter_name=style)
    Mix(WEIGHTS, mults).apply(live)
    torch.manual_seed(0)
    x, t, ids = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.randint(0, 49407, (2, 77))
    with torch.no_grad():
        for pipe in (baked, live):
            pipe.text = pipe.text_encoder(ids)[0]
            pipe.out = pipe.unet(x, t, pipe.text).sample
    assert torch.allclose(baked.text, live.text, atol=1e-5) and torch.allclose(baked.out, live.out, atol=1e-5)
