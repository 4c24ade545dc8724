import pytest
from PIL import Image

from stages.caption import caption_style
from stylemix import params
from stylemix.data.prompts import training_captions, with_trigger
from stylemix.errors import StyleMixError
from stylemix.outputs import read_jsonl, write_jsonl


@pytest.fixture
def filtered(tmp_path):
    folder = tmp_path / "filtered" / "ink"
    folder.mkdir(parents=True)
    rows = []
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (48, 48), colour).save(folder / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png"})
    (folder / "img0.txt").write_text("a red   square\n")
    (folder / "img1.txt").write_text("a green square")
    write_jsonl(folder / "index.jsonl", rows)
    return tmp_path


def test_sidecar_backend_reads_txt_files(filtered):
    rows = caption_style("ink", params.Caption(backend="sidecar"), filtered / "filtered", filtered / "captions")
    assert rows == [{"file_name": "img0.png", "text": "a red square"},
                    {"file_name": "img1.png", "text": "a green square"},
                    {"file_name": "img2.png", "text": ""}]
    assert read_jsonl(filtered / "captions/ink/metadata.jsonl") == rows


def test_blip_backend_through_from_pretrained(filtered, tiny_blip):
    cfg = params.Caption(backend="blip", model=str(tiny_blip), batch_size=2, max_new_tokens=5)
    rows = caption_style("ink", cfg, filtered / "filtered", filtered / "captions")
    assert [r["file_name"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    vocab = set((tiny_blip / "vocab.txt").read_text().split())
    for row in rows:  # gibberish, but made of the tiny vocabulary by a real generate() loop
        assert row["text"] and set(row["text"].split()) <= vocab


def test_missing_caption_model_is_one_clear_line(filtered):
    cfg = params.Caption(backend="blip", model="Salesforce/blip-image-captioning-base")
    with pytest.raises(StyleMixError, match=r"caption.model = 'Salesforce/blip-image-captioning-base': cannot load"):
        caption_style("ink", cfg, filtered / "filtered", filtered / "captions")


def test_style_without_filtered_images(tmp_path):
    with pytest.raises(StyleMixError, match=r"run `dvc repro filter@ghost`"):
        caption_style("ghost", params.Caption(), tmp_path, tmp_path)


def test_overrides_win_and_trigger_follows_template(filtered, capsys):
    caption_style("ink", params.Caption(backend="sidecar"), filtered / "filtered", filtered / "captions")
    style = params.Style(source="x", trigger="inkstyle", overrides={"img1.jpg": "a hand-fixed caption", "gone.png": "x"})
    captions = training_captions("ink", style, filtered / "captions")
    assert captions == {"img0.png": "inkstyle, a red square",
                        "img1.png": "inkstyle, a hand-fixed caption",  # matched by stem, as kohya sidecars are
                        "img2.png": "inkstyle"}  # no caption: the trigger alone
    assert "overrides names images not among its filtered images: gone" in capsys.readouterr().out


def test_suffix_template():
    style = params.Style(source="x", trigger="drawn by KSH drawing style", template="{caption}, {trigger}")
    assert with_trigger("a girl reading", style) == "a girl reading, drawn by KSH drawing style"
