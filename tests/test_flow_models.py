"""FLUX.1 and SD 3.5 on `tiny-flux` and `tiny-sd3`: the family read from the model, the text
conditioning their pipelines compute, flow-matching sigmas and loss, training that resumes
bit-exactly, LoRA files that load back to their trained deltas, and one-line errors for the settings
that belong to the UNets."""
import json
import math
import re
import shutil
import subprocess

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
from diffusers.configuration_utils import FrozenDict
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from stages.encode import encode_style
from stages.generate import generate_model
from stages.validate import loss_matrix
from stylemix import params
from stylemix.adapters.load_check import adapter_deltas, deltas
from stylemix.adapters.loading import load_adapter, read_info
from stylemix.data.latent_cache import LatentCache
from stylemix.demo.sample import build_style
from stylemix.errors import StyleMixError
from stylemix.families import FLUX, SD3, architecture
from stylemix.mixing.merging import merge_combo
from stylemix.models import flow_files
from stylemix.models.base_model import family, load_pipeline
from stylemix.models.tiny_flow import build_tiny_flow
from stylemix.paths import LATENTS_FILE, STRENGTH_IMAGES, image_name
from stylemix.training import flow
from stylemix.training.timesteps import sigmas
from tests.e2e import ENV
from tests.test_train import killed_after, launch_two_processes, prepare, train, weights
from tests.ui_workspace import COMBO, make_workspace

RESOLUTION = 32
TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]  # not SD 3.5's attn2, which ComfyUI does not name
# The diffusers layer names ComfyUI maps to `transformer.<name>` LoRA keys, as we read comfy/utils.py's
# flux_to_diffusers and mmdit_to_diffusers (the blocks' linear layers).
COMFYUI = {FLUX: r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|to_out\.0|to_add_out)|norm1(_context)?\.linear|"
                 r"ff(_context)?\.net\.(0\.proj|2))|single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out|norm\.linear)",
           SD3: r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|to_out\.0|to_add_out)|norm1(_context)?\.linear|"
                r"ff(_context)?\.net\.(0\.proj|2))"}


@pytest.fixture(scope="module", params=[FLUX, SD3])
def model(request, tmp_path_factory):
    return request.param, build_tiny_flow(tmp_path_factory.mktemp(request.param) / "model", request.param)


def make_params(folder, source, **train) -> params.Params:
    return params.validate({
        "base": {"model": str(folder), "resolution": RESOLUTION, "buckets": {"enabled": True, "step": 16}},
        "styles": {"openmoji": {"source": str(source), "trigger": "omstyle"}},
        "lora": {"rank": 4, "alpha": 4, "targets": TARGETS},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "validation_steps": 2,
                  "validation_prompts": ["a cat"], "caption_dropout": 0.3, "min_snr_gamma": None} | train,
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory, model):
    """Six openmojis (in three aspect ratios) filtered into 16-px buckets, captioned and encoded."""
    arch, folder = model
    root = tmp_path_factory.mktemp(f"data-{arch}")
    (root / "src").mkdir()
    build_style("openmoji", root / "src", count=6, seed=0)
    prepare("openmoji", root, make_params(folder, root / "src"))
    return root


def test_the_family_comes_from_the_model(model):
    arch, folder = model
    pipe = load_pipeline(str(folder))
    assert isinstance(pipe, {FLUX: FluxPipeline, SD3: StableDiffusion3Pipeline}[arch])
    assert architecture(pipe) == architecture(pipe.transformer) == arch
    assert family(params.Base(model=str(folder))) == arch  # read from model_index.json, before loading


def test_cached_text_is_what_the_pipeline_computes(model, data):
    arch, folder = model
    cache = LatentCache(data / "latents/openmoji" / LATENTS_FILE)
    pipe = DiffusionPipeline.from_pretrained(folder)
    first = cache.groups()[0]
    captions = cache.group_captions()[0]
    with torch.no_grad():
        if arch == FLUX:
            hidden, pooled, _ = pipe.encode_prompt(captions, prompt_2=None)
        else:
            hidden, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
    assert torch.allclose(first["text_hidden"], hidden, atol=1e-6) and torch.allclose(first["text_pooled"], pooled, atol=1e-6)
    assert first["mean"].shape[1] == 16 and "time_ids" not in first  # 16 latent channels; no SDXL micro-conditioning


def test_sigmas_are_shifted_as_the_schedulers_shift_them():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    u = sigmas(params.Timesteps(shift=1.0), {}, torch.Size((64, 16, 4, 4)), gen())
    sd3 = sigmas(params.Timesteps(), {"shift": 3.0}, torch.Size((64, 16, 4, 4)), gen())
    assert torch.allclose(sd3, 3 * u / (1 + 2 * u))  # SD 3.5's static shift, on the same draws
    config = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
              "max_shift": 1.15}

    class Config(dict):
        __getattr__ = dict.__getitem__
    # FLUX.1 at 1024 px: 128 x 128 latents, 4096 patches, the largest shift mu = 1.15.
    flux = sigmas(params.Timesteps(), Config(config), torch.Size((64, 16, 128, 128)), gen())
    assert torch.allclose(flux, math.exp(1.15) / (math.exp(1.15) + (1 / u - 1)), atol=1e-6)
    assert (flux > u).all() and (sd3 > u).all()  # both lean to the noisy end
    mode = sigmas(params.Timesteps(sampling="logit_normal", shift=1.0), {}, torch.Size((4000, 1, 2, 2)), gen())
    assert 0.45 < mode.median() < 0.55 and 0 < mode.min() and mode.max() < 1


def test_the_loss_is_the_velocity_error_by_hand(model):
    """noisy = (1 - s) x + s n, target n - x, at the sigmas the same generator draws."""
    _, folder = model
    pipe = load_pipeline(str(folder))
    net, cfg = pipe.transformer, params.Train(min_snr_gamma=None)
    x, n = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 4, 6)
    hidden, pooled = torch.randn(2, 7, net.config.joint_attention_dim), torch.randn(2, net.config.pooled_projection_dim)
    with torch.no_grad():
        error, weight = flow.loss(net, pipe.scheduler.config, x, n, hidden, pooled, cfg, torch.Generator().manual_seed(0))
        s = sigmas(cfg.timesteps, pipe.scheduler.config, x.shape, torch.Generator().manual_seed(0))
        pred = flow.predict(net, (1 - s.view(-1, 1, 1, 1)) * x + s.view(-1, 1, 1, 1) * n, s, hidden, pooled, 1.0)
    assert pred.shape == x.shape and torch.equal(weight, torch.ones(2))
    assert torch.allclose(error, (pred - (n - x)) ** 2, atol=1e-6)


def test_flux_patches_go_back_where_they_came_from():
    """FLUX.1's transformer reads 2x2 patches as tokens: a transformer that returns its tokens gives back the latents."""
    class Echo(torch.nn.Module):
        config = FrozenDict(joint_attention_dim=32, guidance_embeds=True)  # FLUX.1 [dev]'s

        def forward(self, hidden_states, img_ids, guidance, **_):
            assert img_ids.shape == (hidden_states.shape[1], 3) and guidance.tolist() == [3.5, 3.5]
            return (hidden_states,)
    x = torch.randn(2, 16, 4, 6)
    assert torch.equal(flow.predict(Echo(), x, torch.rand(2), torch.randn(2, 7, 32), torch.randn(2, 32), 3.5), x)


def test_training_resumes_bit_exactly_and_the_lora_loads_back(model, data, tmp_path):
    arch, folder = model
    p = make_params(folder, data / "src")
    whole = weights(train(data, tmp_path, p, run="whole"))
    killed_after(data, tmp_path, p, 3, "killed")
    resumed = train(data, tmp_path, p, run="killed")
    assert whole.keys() == weights(resumed).keys()
    assert all(torch.equal(whole[k], v) for k, v in weights(resumed).items())
    # The saved file, loaded into a fresh pipeline by diffusers' own loader, holds the trained update.
    lora = tmp_path / "whole/lora/openmoji"
    assert read_info(lora)["architecture"] == arch and (lora / "validation.png").is_file()
    # ComfyUI's copy (train@S's load check read it back by the formula ComfyUI applies): every layer
    # under a name ComfyUI maps, kohya's tensor names, each layer's alpha.
    comfy = safe_open(lora / "openmoji_comfyui.safetensors", "pt")
    layers = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in comfy.keys()}
    assert layers and all(re.fullmatch(COMFYUI[arch], layer.removeprefix("transformer.")) for layer in layers), layers
    assert {k.split(".")[-1] for k in comfy.keys()} == {"weight", "alpha"}
    pipe = load_pipeline(str(folder))
    load_adapter(pipe, lora, "style")
    trained = adapter_deltas(resumed["pipe"])["transformer"]
    got = deltas(pipe.transformer, "style")
    assert got.keys() == trained.keys() and all(torch.allclose(got[m], trained[m], atol=1e-6) for m in trained)
    assert any(d.abs().max() > 0 for d in got.values())


def test_an_8bit_base_trains_the_lora_the_full_one_does(model, data, tmp_path):
    """train.quantize_base: int8 (torchao): the transformer's linear weights are int8 while the LoRA
    trains in float32 beside them; after 4 steps the LoRA is within 2% of the one trained on the
    full base (another seed's is 100% away), and a killed run resumes on it bit-exactly."""
    arch, folder = model
    flat = lambda result: torch.cat([v.flatten() for v in weights(result).values()])  # noqa: E731
    full = flat(train(data, tmp_path, make_params(folder, data / "src"), run="full"))
    other_seed = flat(train(data, tmp_path, make_params(folder, data / "src", seed=1), run="seed1"))
    p = make_params(folder, data / "src", quantize_base="int8")
    result = train(data, tmp_path, p, run="int8")
    layer = result["pipe"].transformer.transformer_blocks[0].attn.to_q
    assert layer.base_layer.weight.dtype == torch.float32 and "Int8" in type(layer.base_layer.weight).__name__
    assert all(v.dtype == torch.float32 for v in result["trainables"].values())
    distance = lambda a: ((a - full).norm() / full.norm()).item()  # noqa: E731
    assert distance(flat(result)) < 0.02 and distance(other_seed) > 1.0, (distance(flat(result)), distance(other_seed))
    killed_after(data, tmp_path, p, 3, "killed")
    assert torch.equal(flat(train(data, tmp_path, p, run="killed")), flat(result))
    p = make_params(folder, data / "src", quantize_base="int8")
    with pytest.raises(StyleMixError, match=r"train.quantize_base = int8 with lora.type = dora: .* set lora.type: lora"):
        train(data, tmp_path, p.model_copy(update={"lora": p.lora.model_copy(update={"type": "dora"})}), run="dora")


@pytest.mark.parametrize("edit, expected", [
    ({"train": {"min_snr_gamma": 5.0}}, "train.min_snr_gamma: settings of SD 1.5 / SDXL's noise schedule"),
    ({"lora": {"type": "loha"}}, "lora.type loha"),
    ({"lora": {"targets": "style"}}, "lora.targets: style names layers of SD 1.5 / SDXL's UNet; FLUX.1 and SD 3.5 take attn, all, single_blocks"),
])
def test_unet_settings_are_one_line(model, data, tmp_path, edit, expected):
    _, folder = model
    p = make_params(folder, data / "src")
    p = params.validate(p.model_dump() | {k: p.model_dump()[k] | v for k, v in edit.items()})
    with pytest.raises(StyleMixError, match=expected.replace(".", r"\.")):
        train(data, tmp_path, p)


def test_clip_settings_are_one_line_at_encode(model, data, tmp_path):
    _, folder = model
    p = make_params(folder, data / "src")
    style = p.styles["openmoji"].model_copy(update={"tokens": {"<om>": "emoji"}})
    with pytest.raises(StyleMixError, match="styles.openmoji.tokens: a setting of the CLIP"):
        encode_style("openmoji", style, p.base, data / "filtered", data / "captions", tmp_path)


@pytest.mark.parametrize("name, weights", [
    ("flux-dev", 11_901_408_320), ("flux-schnell", 11_891_178_560),  # BFL: "12 billion parameters"; schnell has no guidance embedder
    ("sd35-medium", 2_469_663_936), ("sd35-large", 8_146_280_768),  # Stability: 2.5 and 8.1 billion (with the position table)
])
def test_shipped_configs_are_the_real_models(name, weights):
    """Each config folder builds its model's transformer on the meta device with the real weight count,
    its VAE (FLUX.1's autoencoder: 83.8 M) and its CLIP encoders (L: 123 M, G: 695 M); the transformer
    written in the makers' single-file layout is what diffusers recognises as that model and converts
    back weight for weight, shape for shape."""
    import transformers
    from accelerate import init_empty_weights
    from diffusers.loaders import single_file_utils as diffusers_files

    from stylemix.models.single_file import CONFIGS

    folder = CONFIGS[name]
    index = json.loads((folder / "model_index.json").read_text())
    counts, models = {}, {}
    with init_empty_weights():
        for component in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            library, cls = index.get(component, (None, None))
            if library == "diffusers":
                model = getattr(diffusers, cls).from_config(getattr(diffusers, cls).load_config(folder / component))
            elif cls and cls != "T5EncoderModel":  # T5-XXL: its shipped config only (4.76 B, with the embedding tied)
                model = getattr(transformers, cls)(transformers.AutoConfig.from_pretrained(folder / component))
            else:
                continue
            counts[component], models[component] = sum(v.numel() for v in model.state_dict().values()), model
    clips = [123_060_480] if name.startswith("flux") else [123_650_304, 694_659_840]  # with SD 3.5's projections
    assert counts == {"transformer": weights, "vae": 83_819_683} | dict(zip(("text_encoder", "text_encoder_2"), clips))
    arch = FLUX if name.startswith("flux") else SD3
    state = flow_files.original_state_dict(models["transformer"], arch)
    assert flow_files.model_type(list(state)) == name
    assert diffusers_files.infer_diffusers_model_type(state) == name.replace("sd35-", "sd35_")
    convert = {FLUX: diffusers_files.convert_flux_transformer_checkpoint_to_diffusers,
               SD3: diffusers_files.convert_sd3_transformer_checkpoint_to_diffusers}[arch]
    shapes = lambda state: {k: tuple(v.shape) for k, v in state.items()}  # noqa: E731
    assert shapes(convert(dict(state))) == shapes(models["transformer"].state_dict())


def test_an_sd35_transformer_file_loads_with_its_components(model, tmp_path, no_network):
    """A transformer-only file (ComfyUI's prefix and all) is read by diffusers' from_single_file with the
    config of base.config, into the pipeline of base.components, weight for weight; a missing components
    model is one line. (A tiny FLUX.1 file cannot be read back: diffusers' FLUX converter assumes the
    real model's width, 3072, which the test above checks at the real shape.)"""
    arch, folder = model
    pipe = load_pipeline(str(folder))
    path = tmp_path / f"{arch}.safetensors"
    save_file({flow_files.PREFIX + k: v.contiguous() for k, v in flow_files.original_state_dict(pipe.transformer, arch).items()}, path)
    base = params.Base(model=str(path), config=str(folder), components=str(folder))
    assert family(base) == arch
    if arch == FLUX:
        return
    loaded = load_pipeline(base)
    assert isinstance(loaded, StableDiffusion3Pipeline)
    mine, theirs = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(StyleMixError, match=r"^base.components = 'someone/sd35': not found .* HF_HUB_OFFLINE is set"):
        load_pipeline(base.model_copy(update={"components": "someone/sd35"}))


def test_merge_generate_and_validate_on_the_flow_models(model, data, tmp_path):
    """Downstream of training: two LoRAs merged exactly (the merged file loads back to the weighted sum),
    drawn by generate@M with the model's own flow-matching sampler, and the held-out loss matrix."""
    arch, folder = model
    p = make_params(folder, data / "src", max_steps=2)
    loras = tmp_path / "loras"
    for run, seed in (("openmoji", 0), ("other", 1)):
        train(data, tmp_path, p.model_copy(update={"train": p.train.model_copy(update={"seed": seed})}), run=run)
        shutil.copytree(tmp_path / run / "lora/openmoji", loras / run)
    pipe = load_pipeline(str(folder))
    info = merge_combo("mix", params.Combo(weights={"openmoji": 0.6, "other": 0.4}), loras, tmp_path / "merged", check_with=pipe)
    assert info["architecture"] == arch and info["rank"] == 8  # linear: the two rank-4 LoRAs stacked

    cfg = params.Generate(prompts=["a cat"], seeds=[0], steps=2, scheduler="euler", strengths=[0.5])
    drawn = {}
    for name, lora in (("base", None), ("mix", tmp_path / "merged/mix")):
        (tmp_path / "images" / name).mkdir(parents=True)
        generate_model(pipe, name, lora, cfg, p.base, tmp_path / "images" / name)
        drawn[name] = np.asarray(Image.open(tmp_path / "images" / name / image_name(0, 0)))
    assert drawn["mix"].shape == (RESOLUTION, RESOLUTION, 3) and not np.array_equal(drawn["mix"], drawn["base"])
    assert (tmp_path / "images/mix" / STRENGTH_IMAGES).is_dir()
    with pytest.raises(StyleMixError, match="generate.scheduler = dpmsolver\\+\\+: .* set generate.scheduler: euler"):
        generate_model(pipe, "base", None, cfg.model_copy(update={"scheduler": "dpmsolver++"}), p.base, tmp_path)

    encode_style("openmoji", p.styles["openmoji"], p.base, data / "filtered", data / "captions", tmp_path / "latents", heldout=2)
    rows = loss_matrix(pipe, ["openmoji", "other"], params.Validation(timesteps=[300, 700]), tmp_path / "latents", loras)
    assert set(rows) == {"base", "openmoji", "other"} and rows["openmoji"]["openmoji"]["mean"] != rows["base"]["openmoji"]["mean"]


@pytest.fixture(scope="module")
def workspace(model, tmp_path_factory):
    arch, _ = model
    return make_workspace(tmp_path_factory.mktemp(f"workspace-{arch}"), {FLUX: "tiny-flux", SD3: "tiny-sd3"}[arch])


def test_the_web_uis_drawing_on_the_flow_models(model, workspace, monkeypatch):
    """The UI's Studio on the flow model: the style's weight moves the picture, off draws the base, and
    a UNet sampler or block weights are one line each."""
    from stylemix.commands.ui import Studio

    monkeypatch.chdir(workspace)
    studio = Studio()
    form = {"prompt": "omstyle, a zebra", "negative": "", "seed": 0, "steps": 2, "guidance": 3.5, "size": RESOLUTION,
            "sampler": "euler", "blocks": "", "schedule": ""}
    pixels = lambda image: np.asarray(image, dtype=float)  # noqa: E731
    base, on = (pixels(studio.draw(form, {"openmoji": w})[0]) for w in (0.0, 1.0))
    assert abs(on - base).mean() > 1 and (pixels(studio.draw(form, {})[0]) == base).all()
    with pytest.raises(StyleMixError, match=r"^generate.scheduler = ddim: .* set generate.scheduler: euler"):
        studio.draw(form | {"sampler": "ddim"}, {"openmoji": 1.0})
    with pytest.raises(StyleMixError, match=r"^blocks of openmoji: block weights name the attention blocks of SD 1.5 / SDXL.s UNet, and this base is a transformer"):
        studio.draw(form | {"blocks": "openmoji=down:0"}, {"openmoji": 1.0})


def test_draw_export_and_publish_on_the_flow_models(model, workspace, monkeypatch):
    """The commands a person types, in a workspace of the flow model with two random style LoRAs and
    their combination: `stylemix draw` with both, `export --fused` (the transformer in its makers'
    layout; SD 3.5's loads back through base.components as the fused model, weight for weight) and
    `publish --dry-run` (both LoRA files, the family's hub tag, ComfyUI's file named on the card)."""
    from stylemix.drawing.drawer import Drawer

    arch, _ = model
    root = workspace

    def stylemix(*args: str) -> str:
        result = subprocess.run(["stylemix", *args], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout
    stylemix("draw", "zebra", "openmoji=0.6", "lineart=0.4", "--seed", "1", "-o", "zebra.png")
    assert Image.open(root / "zebra.png").size == (RESOLUTION, RESOLUTION)
    said = stylemix("export", "openmoji", "--fused", "out/openmoji.safetensors", "--dtype", "float32")
    assert "load it with base.model: out/openmoji.safetensors with base.config: out/openmoji.configs and " \
           "base.components: models/base" in said
    keys = list(safe_open(root / "out/openmoji.safetensors", "pt").keys())
    assert flow_files.model_type(keys) == {FLUX: "flux-dev", SD3: "sd35-medium"}[arch]  # guidance; MMDiT-X's attn2
    stylemix("publish", COMBO, "--dry-run", "hub")
    assert {f.name for f in (root / "hub").iterdir()} >= {"pytorch_lora_weights.safetensors", f"{COMBO}_comfyui.safetensors", "README.md"}
    card = (root / "hub/README.md").read_text()
    assert f"- {arch}\n" in card and f"{COMBO}_comfyui.safetensors for ComfyUI" in card
    if arch == FLUX:  # diffusers' FLUX converter assumes the real width (see the test above)
        return
    monkeypatch.chdir(root)
    back = load_pipeline(params.Base(model="out/openmoji.safetensors", config="out/openmoji.configs", components="models/base"))
    drawer = Drawer(params.load("base").base)
    drawer.fuse({"openmoji": 1.0})
    fused, loaded = drawer.pipe.transformer.state_dict(), back.transformer.state_dict()
    assert fused.keys() == loaded.keys() and all(torch.equal(fused[k], loaded[k]) for k in fused)
    assert not torch.equal(fused["transformer_blocks.0.attn.to_q.weight"], load_pipeline("tiny-sd3").transformer.state_dict()
                           ["transformer_blocks.0.attn.to_q.weight"])  # the LoRA is in it


def test_the_target_presets_name_the_layers_comfyui_loads(model):
    """lora.targets attn / all / single_blocks on a transformer: attention of both streams, then its MLPs
    too, then FLUX.1's single blocks alone; every layer one ComfyUI names (so neither SD 3.5's attn2 nor
    the model's final proj_out)."""
    from stylemix.adapters.lora_files import unet_targets

    arch, folder = model
    net = load_pipeline(str(folder)).transformer
    attn, every = unet_targets(net, "attn"), unet_targets(net, "all")
    assert set(attn) < set(every) and all(re.fullmatch(COMFYUI[arch], n) for n in every), every
    assert "proj_out" not in every and not any(".attn2." in n for n in every)
    assert {n.split(".")[-1] for n in set(every) - set(attn)} >= {"proj", "2"} | ({"proj_mlp", "proj_out"} if arch == FLUX else set())
    if arch == FLUX:
        assert unet_targets(net, "single_blocks") == [n for n in every if n.startswith("single_transformer_blocks.")
                                                       and not n.endswith("attn.to_out.0")]
    else:
        with pytest.raises(StyleMixError, match=r"^lora.targets: single_blocks: SD 3.5 has no such layers"):
            unet_targets(net, "single_blocks")


@pytest.mark.parametrize("preset, arch", [("flux-dev", FLUX), ("sd35-medium", SD3)])
def test_the_presets_fit_their_family(preset, arch, tmp_path):
    """Every target layer of a preset exists in its family's transformer (the tiny one has the real one's
    layer names), its settings are flow matching's, and it draws with the model's own sampler."""
    from stylemix.adapters.lora_files import unet_targets
    from stylemix.drawing.render import use_sampler
    from tests.conftest import ROOT

    p = params.load("base", "lora", "train", "generate", path=ROOT / "presets" / f"{preset}.yaml")
    pipe = load_pipeline(str(build_tiny_flow(tmp_path / "model", arch)))
    assert unet_targets(pipe.transformer, p.lora.targets) == p.lora.targets
    flow.check_settings(p.train, arch)
    use_sampler(pipe, p.generate.scheduler)
    assert p.base.resolution == 1024 and p.train.mixed_precision == "bf16"


def test_two_cpu_processes_train_a_flow_lora(model, data, tmp_path):
    """accelerate with 2 processes (gloo DDP), as users launch several GPUs: the wrapped transformer's
    config is read through the wrapper, and the LoRA written once loads into the pipeline. FLUX.1 on its
    8-bit base, as its preset trains (DDP broadcasts the frozen int8 weights too)."""
    arch, folder = model
    p = make_params(folder, data / "src", max_steps=2, quantize_base="int8" if arch == FLUX else None)
    log = launch_two_processes(tmp_path, data / "latents", p, "openmoji")
    assert log.count("train openmoji: 2 of 2 steps") == 1
    assert read_info(tmp_path / "models/lora/openmoji")["architecture"] == arch
    load_adapter(load_pipeline(str(folder)), tmp_path / "models/lora/openmoji", "style")


def test_layers_comfyui_cannot_name_are_said(model, data, tmp_path, capsys):
    """SD 3.5 Medium's second attention (attn2, which `to_q` also targets) has no name in ComfyUI's SD 3
    table: the ComfyUI copy keeps it and one line says ComfyUI will load the rest. FLUX.1's are all named."""
    arch, folder = model
    p = make_params(folder, data / "src", max_steps=1)
    train(data, tmp_path, p.model_copy(update={"lora": p.lora.model_copy(update={"targets": ["to_q"]})}))
    said = [line for line in capsys.readouterr().out.splitlines() if "ComfyUI's SD 3 key table" in line]
    assert len(said) == (1 if arch == SD3 else 0), said
    if said:
        assert "1 layer(s) of SD 3.5 Medium's second attention (attn2, e.g. transformer.transformer_blocks.0.attn2.to_q)" in said[0]
