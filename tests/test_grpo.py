"""GRPO (model/grpo.py): group advantages and the clipped surrogate with its KL penalty on
hand-computed numbers, a few steps on a tiny model raise the reward of a trivially learnable task
(and its held-out accuracy), checkpoints load like any other, and a run killed after a checkpoint
resumes to the same result."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint
from model.chat_data import sft_batches
from model.grpo import RlConfig, collate, group_advantages, grpo_loss, replay_rows, run_rl
from model.hf import tokenizer_folder
from model.posttrain import reply
from model.sampling import load_model
from model.verifiable import FAMILIES, Problem, register_family
from tests.test_posttrain import SUBJECTS, one_thread, world  # noqa: F401 - fixtures

EARLY = "abcdefghijklm"  # the trivially learnable task: begin the reply with one of these letters


def early_letter(completion: str, problem: Problem) -> bool:
    return completion.strip()[:1].lower() in set(EARLY)


def subject_pair(rng) -> Problem:
    return Problem(f"Tell me something about {rng.choice(SUBJECTS)} and {rng.choice(SUBJECTS)}?", "", "", "early")


@pytest.fixture(scope="module", autouse=True)
def early_family():
    register_family("early", subject_pair, check=early_letter)
    yield
    del FAMILIES["early"]


FAST = {"families": ["early"], "prompts_per_step": 4, "group_size": 8, "max_new_tokens": 4, "format_reward": 0.0,
        "heldout_problems": 16, "micro_batch": 16, "sample_prompts": ["Tell me something about rain?"]}


def rl(world, out, log=None, **values) -> dict:
    return run_rl(RlConfig.from_dict({**FAST, "base": str(world["base"]), "out": str(out), **values}), log=log)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1], [1.1, 0.1, 0.0, 0.1]])
    adv = group_advantages(rewards, eps=0.0)
    third = torch.tensor([1.1, 0.1, 0.0, 0.1])
    c = 0.5 / math.sqrt(1 / 3)                               # deviations of 0.5, sample variance 1/3
    assert adv[0].tolist() == pytest.approx([c, -c, -c, c], abs=1e-6)
    # nothing to prefer: exactly 0 (the mean's rounding error over eps once gave -7e-5 per 0.1-reply)
    assert group_advantages(torch.full((2, 8), 0.1)).tolist() == [[0.0] * 8] * 2
    assert group_advantages(rewards)[1].tolist() == [0.0] * 4
    mean, std = 1.3 / 4, math.sqrt(sum((x - 1.3 / 4) ** 2 for x in third.tolist()) / 3)
    assert adv[2].tolist() == pytest.approx([(x - mean) / std for x in third.tolist()], abs=1e-5)
    assert group_advantages(rewards)[0, 0] < adv[0, 0]      # eps keeps a tiny std finite


def test_update_skips_zero_advantage_replies_with_the_same_gradient(world):
    """_update runs only the replies whose advantage is not 0 (without KL): the gradient equals
    the one of the full batch's loss, replies with advantage 0 included."""
    from model.grpo import _update, token_logps

    model, _ = load_model(world["base"])
    prompts = [[5, 6, 7]] * 4 + [[8, 9]] * 4
    replies = [[10, 11], [12], [10, 13, 14], [11], [15, 16], [15, 16], [17], [18, 19, 20]]
    advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1] * 4])).flatten()
    assert advantages[4:].tolist() == [0.0] * 4 and advantages[:4].abs().min() > 0

    ids, mask = collate(prompts, replies)
    logps = token_logps(model, ids, mask, 0.7)
    grpo_loss(logps, logps.detach(), None, advantages, mask)[0].backward()
    full = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    cfg = RlConfig.from_dict({**FAST, "base": "-", "out": "-", "temperature": 0.7, "micro_batch": 3})
    seen = []
    optimizer = type("Recorder", (), {"step": lambda self: seen.append({n: p.grad.clone() for n, p in
                                                                         model.named_parameters()}),
                                      "zero_grad": lambda self, set_to_none: model.zero_grad(set_to_none=True)})()
    cfg.grad_clip = float("inf")
    _update(model, None, optimizer, cfg, prompts, replies, advantages, torch.device("cpu"))
    assert len(seen) == 1 and any(g.abs().sum() > 0 for g in full.values())
    for name, grad in full.items():
        assert torch.allclose(seen[0][name], grad, atol=1e-6), name

    # every group equal: no forward at all, a zero gradient, and still one optimizer step
    _update(model, None, optimizer, cfg, prompts, replies, torch.zeros(8), torch.device("cpu"))
    assert len(seen) == 2 and all(g.abs().sum() == 0 for g in seen[1].values())


def test_grpo_loss_by_hand():
    log = math.log
    # two replies: 2 tokens (A = +1) and 1 token + padding (A = -1)
    logps = torch.tensor([[log(0.5), log(0.25)], [log(0.1), 0.0]], requires_grad=True)
    old = torch.tensor([[log(0.25), log(0.25)], [log(0.2), 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = grpo_loss(logps, old, None, adv, mask, clip_eps=0.2)
    # row 1: ratios 2 (clipped to 1.2) and 1 -> -(1.2 + 1) / 2; row 2: ratio 0.5 -> -min(-0.5, -0.8) = 0.8
    assert loss.item() == pytest.approx((-(1.2 + 1.0) / 2 + 0.8) / 2)
    assert metrics == {"clip_ratio": pytest.approx(2 / 3)}   # both clipped tokens count, padding does not
    loss.backward()
    # clipped tokens carry no gradient; the unclipped one: -A * ratio / (tokens of its reply * replies)
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -0.25, 0.0, 0.0])

    ref = torch.tensor([[log(0.5) + log(2), log(0.25)], [log(0.1), 0.0]])  # ref twice as likely on one token
    fresh = logps.detach().requires_grad_()
    loss, metrics = grpo_loss(fresh, fresh.detach(), ref, adv, mask, kl_beta=0.5)
    k3 = 2 - log(2) - 1
    assert metrics["kl"] == pytest.approx(k3 / 3) and metrics["clip_ratio"] == 0.0
    assert loss.item() == pytest.approx(((-1 + 0.5 * k3 - 1) / 2 + 1) / 2)   # ratio 1: the loss is -A plus KL
    loss.backward()
    # on-policy: d/dlogp of -A * ratio is -A; k3's derivative is 1 - exp(ref - logp)
    assert fresh.grad.flatten().tolist() == pytest.approx([(-1 + 0.5 * (1 - 2)) / 4, -1 / 4, 1 / 2, 0.0])


def test_collate_marks_reply_targets_only():
    ids, mask = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    assert ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert mask.tolist() == [[False, False, True, True], [True, True, True, False]]


def test_a_few_steps_raise_the_reward_of_a_learnable_task(world, tmp_path):
    lines: list[dict] = []
    last = rl(world, tmp_path / "rl", lines.append, max_steps=12, lr=2e-2, eval_every=6, checkpoint_every=12)
    data = next(m for m in lines if m.get("event") == "data")
    assert data["train"] == 48 and data["held_out"] == 16 and data["quarantined"] == 0
    steps = [m for m in lines if m.get("step", 0) > 0]
    assert [m["step"] for m in steps] == list(range(1, 13))
    first, before = sum(m["rl/reward_mean"] for m in steps[:3]) / 3, lines[[m.get("step") for m in lines].index(0)]
    assert sum(m["rl/reward_mean"] for m in steps[-3:]) / 3 > first + 0.3
    assert last["rl/accuracy_heldout"] > before["rl/accuracy_heldout"] + 0.3
    assert "rl/kl" not in last and last["rl/clip_ratio"] == 0.0  # no reference held; one update per batch
    assert {"rl/reward_std", "rl/completion_length", "rl/loss", "rl/grad_norm"} <= set(last)
    assert len(before["samples"]) == len(last["samples"]) == 1
    ckpt = latest_checkpoint(tmp_path / "rl")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["kind"] == "rl" and meta["step"] == 12 and meta["rl"]["lr"] == 2e-2
    assert meta["train"]["manifest"] == str(world["manifest"])
    assert tokenizer_folder(ckpt) == tokenizer_folder(world["base"])
    model, _ = load_model(ckpt)                                # a plain checkpoint, holding the tuned weights
    assert reply(model, world["tokenizer"], FAST["sample_prompts"], FAST["max_new_tokens"]) == last["samples"]


def test_kl_is_measured_against_the_frozen_base(world, tmp_path):
    lines: list[dict] = []
    rl(world, tmp_path / "rl", lines.append, max_steps=3, lr=2e-2, kl_beta=0.5, eval_every=3, checkpoint_every=3,
       heldout_problems=4)
    kl = [m["rl/kl"] for m in lines if m.get("step", 0) > 0]
    assert kl[0] == 0.0 and 0 < kl[1] < kl[2]                 # the first rollout is scored by identical weights


class Stop(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_result(world, tmp_path):
    values = {"max_steps": 5, "lr": 1e-2, "eval_every": 5, "checkpoint_every": 2, "heldout_problems": 4,
              "iterations": 2, "kl_beta": 0.1}  # the reference must stay the base, not the resumed weights
    straight: list[dict] = []
    rl(world, tmp_path / "straight", straight.append, **values)

    def killed(line):
        if line.get("step") == 3:  # after the step-2 checkpoint, before the step-4 one
            raise Stop
    with pytest.raises(Stop):
        rl(world, tmp_path / "resumed", killed, **values)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000002"
    resumed: list[dict] = []
    rl(world, tmp_path / "resumed", resumed.append, **values)
    assert next(m for m in resumed if m.get("event") == "resumed")["step"] == 2
    keys = ("rl/reward_mean", "rl/loss", "rl/clip_ratio", "rl/kl", "rl/completion_length")
    after = [m for m in resumed if "event" not in m and m["step"] > 0]
    assert [m["step"] for m in after] == [3, 4, 5]
    assert [[m[k] for k in keys] for m in after] == [[m[k] for k in keys] for m in straight if m.get("step", 0) > 2]
    a, b = (load_file(str(tmp_path / run / "step-000005/model.safetensors")) for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_replaying_sft_rows_trains_them_alongside_the_reward(world, tmp_path):
    """GRPO with the SFT rows replayed in each step (PPO-ptx): the reward still rises, the rows'
    loss is logged every step and ends far below where GRPO alone leaves it."""
    model, _ = load_model(world["base"])
    rows = replay_rows([str(world["sft_data"])], world["tokenizer"], model.config.max_seq_len)
    x, y, _ = sft_batches(rows, 16, model.config.max_seq_len, True, seed=5, step=0)

    def sft_loss(out) -> float:
        tuned, _ = load_model(latest_checkpoint(out))
        with torch.no_grad():
            return tuned(x, y)[1].item()

    settings = {"max_steps": 12, "lr": 2e-2, "eval_every": 12, "checkpoint_every": 12}
    alone = rl(world, tmp_path / "alone", **settings)
    lines: list[dict] = []
    replayed = rl(world, tmp_path / "replayed", lines.append, **settings, replay_data=[str(world["sft_data"])],
                  replay_rows=4)
    assert next(m for m in lines if m.get("event") == "replay")["examples"] == len(rows) > 0
    losses = [m["rl/replay_loss"] for m in lines if m.get("step", 0) > 0]
    assert len(losses) == 12 and losses[-1] < losses[0] / 2
    assert sft_loss(tmp_path / "replayed") < sft_loss(tmp_path / "alone") / 2
    assert replayed["rl/accuracy_heldout"] >= alone["rl/accuracy_heldout"] - 0.25 and "rl/replay_loss" not in alone
