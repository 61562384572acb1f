"""bench/synthetic.py's parts: the checksum that shows every trainer read the same batches, the
Matryoshka prefix widths --hierarchy trains with, each true feature's depth in SAELens's tree, and
the per-depth recovery it prints beside MCC and F1."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench.synthetic import checked, level_recovery, matryoshka_widths, tree_depths


def test_matryoshka_widths_default_levels_and_given():
    """Default: roots x 4^i (SynthSAEBench's 128/512/2,048/4,096 scaled); `levels`: the tree's
    levels summed, so prefix i can hold every feature down to depth i; else the list given."""
    args = argparse.Namespace(features=4096, d_sae=1024, widths="")
    assert matryoshka_widths(args) == [32, 128, 512, 1024]
    args.widths = "levels"
    assert matryoshka_widths(args) == [32, 160, 672, 1024]
    args.widths = "100,1024"
    assert matryoshka_widths(args) == [100, 1024]


def test_tree_depths_of_saelens_hierarchy():
    synthetic = pytest.importorskip("sae_lens.synthetic")
    cfg = synthetic.HierarchyConfig(total_root_nodes=2, branching_factor=2, max_depth=2)
    tree = synthetic.generate_hierarchy(20, cfg, seed=0)
    depth_F = tree_depths(20, tree.roots)
    assert depth_F[:2].tolist() == [0, 0] and depth_F[2:6].tolist() == [1] * 4
    assert depth_F[6:14].tolist() == [2] * 8 and depth_F[14:].tolist() == [-1] * 6


def test_level_recovery_sees_a_missing_root():
    """An SAE holding the true features exactly scores 1 at every depth; one whose root latent
    points at a leaf instead loses the root (cos and F1), not the other depths."""
    F = 6  # root 0 with children 1, 2; leaves 3, 4 under 1; feature 5 outside
    depth_F = torch.tensor([0, 1, 1, 2, 2, -1])
    features_FD = torch.eye(F)
    g = torch.Generator().manual_seed(0)
    codes_BF = (torch.rand(512, F, generator=g) < 0.3).float()
    held_out = [(codes_BF, codes_BF > 0)]  # orthonormal features: the activations are the codes

    exact = level_recovery(lambda x: x, features_FD, features_FD, depth_F, held_out)
    assert all(cos == pytest.approx(1) and f1 == pytest.approx(1) for _, cos, f1 in exact.values())
    assert {d: n for d, (n, _, _) in exact.items()} == {-1: 1, 0: 1, 1: 2, 2: 2}

    W_dec = features_FD.clone()
    W_dec[0] = features_FD[3]  # the root's latent is a second copy of leaf 3's

    def encode(x: torch.Tensor) -> torch.Tensor:
        z = x.clone()
        z[:, 0] = x[:, 3]
        return z

    absorbed = level_recovery(encode, W_dec, features_FD, depth_F, held_out)
    assert absorbed[0][1] < 0.5 and absorbed[0][2] < 0.7
    assert all(absorbed[d][1] == pytest.approx(1) and absorbed[d][2] == pytest.approx(1) for d in (-1, 1, 2))


def test_checksum_of_a_trainer_that_stops_at_its_last_batch():
    """saeq's train_saes reads exactly its batches and never asks for one more; its checksum must
    still be kept (it was not: a saeq-only run failed 'checksums []'), and equal a full reader's."""
    batches = [torch.full((4, 2), float(i)) for i in range(3)]
    sums: list[float] = []
    assert len(list(checked(iter(batches), sums))) == 3  # reads to the end (SAELens's loop)
    feed = checked(iter(batches), sums)
    for _ in range(3):  # reads its three and stops
        next(feed)
    feed.close()
    shuffled = checked(iter(batches[::-1]), sums)
    list(shuffled)
    assert len(sums) == 3 and sums[0] == sums[1] != sums[2]


def test_decoder_init_norm_reaches_saeqs_trainer():
    """--decoder-init-norm sets the trainers' initial decoder rows (saeq's default is 0.1); a step
    at a vanishing lr leaves them there, so the option, not the default, is seen. (SAELens's
    inference SAE folds its row norms into the encoder on save, so its rows read 1 whatever the init.)"""
    from bench.synthetic import train_saeq

    args = argparse.Namespace(
        d_model=16, d_sae=32, k=4, lr=1e-9, tokens=64, batch=64, features=64, widths="", decoder_init_norm=0.3
    )
    batches = iter([torch.randn(64, 16, generator=torch.Generator().manual_seed(0))])
    _, _, W_dec = train_saeq("batchtopk", args, batches, 0)
    assert torch.allclose(W_dec.norm(dim=1), torch.full((32,), 0.3), atol=1e-3)
