"""CLIP score on a tiny CLIP written in the transformers on-disk layout (config.json, model.safetensors,
tokenizer and preprocessor files), checked against a hand-written computation from the model's parts."""

import json
import string

import pytest
import torch

transformers = pytest.importorskip("transformers")

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP normalization
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    letters = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *letters, *[c + "</w>" for c in letters]])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(d, safe_serialization=True)
    return d


def test_clip_score_matches_hand_computation(tiny_clip):
    from transformers import CLIPModel, CLIPTokenizer

    from ld3.metrics.clip_score import ClipScorer, clip_score

    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1  # 32x32: the processor's resize and crop are identities
    captions = ["a cat", "dog on a mat", "zzz", "a very long caption that the tiny text model must truncate"]
    scores = ClipScorer(tiny_clip)(images, captions)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok = CLIPTokenizer.from_pretrained(tiny_clip)
    x = ((images + 1) * 127.5).round() / 255
    pix = (x - CLIP_MEAN) / CLIP_STD
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        out = []
        for i, c in enumerate(captions):
            ids = tok(c, return_tensors="pt", truncation=True, max_length=16)
            txt = model.text_projection(model.text_model(**ids).pooler_output)[0]
            out.append(max(100 * torch.nn.functional.cosine_similarity(img[i], txt, dim=0).item(), 0.0))
    assert max(out) > 1.0  # not all clamped to 0: the comparison is not trivial
    assert scores.shape == (4,) and torch.allclose(scores, torch.tensor(out, dtype=torch.float64), atol=1e-4)
    assert clip_score(images, captions, tiny_clip) == pytest.approx(sum(out) / 4, abs=1e-4)
    grey = ClipScorer(tiny_clip)(images[:, :1], captions)  # grey images are repeated to RGB
    assert grey.shape == (4,)


def test_clip_score_errors(tmp_path, tiny_clip):
    from ld3.metrics.clip_score import ClipScorer

    with pytest.raises(FileNotFoundError, match="no CLIP model"):
        ClipScorer(tmp_path)
    with pytest.raises(ValueError, match="2 images for 1 captions"):
        ClipScorer(tiny_clip)(torch.zeros(2, 3, 32, 32), ["x"])
