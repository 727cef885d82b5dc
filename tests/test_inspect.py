"""Prompt inspection: nearest tokens and image-specificity measures."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Tiny, tiny_config

from ipl.clip import load_clip
from ipl.inspect import decode_token, mean_pairwise_cosine, nearest_tokens, per_position_cosine
from ipl.stages.stage1 import train_mapper

REPO = Path(__file__).resolve().parents[1]


def test_nearest_token_of_a_real_embedding_is_itself():
    clip_model = load_clip("tiny")
    table = clip_model.model.token_embedding.weight
    tokens = clip_model.tokenize(["a photo of a elf"])[0, 1:6]
    sims, ids = nearest_tokens(table[tokens] * 3.0, table, k=2)  # scale does not matter
    assert torch.equal(ids[:, 0], tokens)
    torch.testing.assert_close(sims[:, 0], torch.ones(5))
    assert [decode_token(t) for t in tokens] == ["a", "photo", "of", "a", "elf"]


def test_pairwise_cosine_measures():
    same = torch.randn(1, 4, 8).expand(5, -1, -1)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    eye = torch.eye(8)
    orthogonal = torch.stack([eye[0:2], eye[2:4], eye[4:6], eye[6:8]])  # (4, 2, 8)
    assert mean_pairwise_cosine(orthogonal) == pytest.approx(0.0)
    opposite = torch.stack([eye[:2], -eye[:2]])
    torch.testing.assert_close(per_position_cosine(opposite), torch.tensor([-1.0, -1.0]))


def test_inspect_prompts_script(tmp_path):
    cfg = tiny_config(tmp_path, "stage1.images=fresh")
    tiny = Tiny(cfg)
    path = train_mapper(cfg, tiny.backend, tiny.clip, tmp_path / "run", "cpu", progress=False)
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "inspect_prompts.py"), "--mapper", str(path), "--seeds", "0-2", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("adaptive prompts, 'human' -> 'tolkien elf'")
    assert [line.split()[1] for line in lines[1:4]] == ["0", "1", "2"]
    assert all(line.count("V") == 4 for line in lines[1:4])
    assert "mean pairwise cosine" in lines[4]
