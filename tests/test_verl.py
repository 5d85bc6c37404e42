"""gtpo in verl, on CPU: the estimator on verl's own DataProto, the turn-reward manager, the agent loop's
per-turn rm_scores, and the sandbox tool. No GPU, no Ray cluster, no model: see docs/verl.md for what is not
covered and why."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("tensordict")

from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from gtpo.integrations.verl import GTPORewardManager, RewardSettings, gtpo_reward_tensor
from gtpo.integrations.verl_advantage import compute_gtpo_advantage
from gtpo.integrations.verl_parse import TOOL_CALLS_KEY, build_turns, parse_call, statuses_by_turn
from gtpo.integrations.verl_reward import TURN_REWARDS_KEY, TURN_SPANS_KEY
from gtpo.integrations.verl_shaping import shape_scores
from gtpo.integrations.verl_turns import (
    place_turn_rewards,
    turn_ids_from_mask,
    turn_rewards_from_tokens,
    turn_spans,
)
from gtpo.method.advantages import gtpo_advantages, turns_to_tokens
from gtpo.method.credit import assign_credit
from gtpo.method.similarity import tfidf_code_similarity
from gtpo.types import Problem, Trajectory, Turn

EPS = 1e-6


def normalized(values: list[float]) -> list[float]:
    """(v - mean) / (population std + eps), written out here so the expected numbers do not use gtpo."""
    mean = statistics.fmean(values)
    std = statistics.pstdev(values)
    return [(v - mean) / (std + EPS) for v in values]


def batch(masks: list[list[int]], rewards: list[list[float]], uids: list[str]) -> DataProto:
    return DataProto.from_dict(
        tensors={
            "response_mask": torch.tensor(masks, dtype=torch.long),
            "token_level_rewards": torch.tensor(rewards, dtype=torch.float32),
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )


# ---- turns from the response mask ---------------------------------------------------------------------


def test_turns_are_runs_of_model_tokens():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    turn_ids, turn_mask = turn_ids_from_mask(mask)
    assert turn_ids.tolist() == [
        [0, 0, -1, -1, 1, 1, -1, 2],
        [-1, 0, 0, -1, -1, -1, -1, -1],
        [-1] * 8,
    ]
    assert turn_mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert turn_spans(mask[0]) == [(0, 2), (4, 6), (7, 8)]
    assert turn_spans([0, 0]) == []


def test_token_rewards_sum_into_the_turn_that_owns_their_region():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1]])
    # 0.5 on turn 0's last token, 0.25 on the tool output after it (still turn 0's region), 2 on turn 2
    tokens = torch.tensor([[0.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 2.0]])
    assert turn_rewards_from_tokens(tokens, mask).tolist() == [[0.75, 0.0, 2.0]]
    placed = place_turn_rewards(torch.tensor([[0.75, -1.0, 2.0]]), mask)
    assert placed.tolist() == [[0.0, 0.75, 0.0, 0.0, 0.0, -1.0, 0.0, 2.0]]
    assert turn_rewards_from_tokens(placed, mask).tolist() == [[0.75, -1.0, 2.0]]


# ---- the advantage estimator ------------------------------------------------------------------------


MASKS = [
    [1, 1, 0, 0, 1, 1, 0, 1],  # uid a: 3 turns
    [1, 1, 1, 0, 0, 1, 1, 0],  # uid a: 2 turns, then padding
    [1, 1, 1, 1, 0, 0, 0, 0],  # uid b: 1 turn
    [1, 1, 0, 0, 0, 0, 0, 0],  # uid b: 1 turn
]
REWARDS = [
    [0, -0.1, 0, 0, 0, 0.0, 0, 1.0],  # turn rewards -0.1, 0, 1
    [0, 0, -0.1, 0, 0, 0, 0.0, 0],  # turn rewards -0.1, 0
    [0, 0, 0, 1.0, 0, 0, 0, 0],  # 1
    [0, 0.0, 0, 0, 0, 0, 0, 0],  # 0
]
UIDS = ["a", "a", "b", "b"]
# Returns with gamma = 0.5, by hand: R_j = r_j + 0.5 * R_{j+1}
RETURNS = [[-0.1 + 0.5 * 0.5, 0.0 + 0.5 * 1.0, 1.0], [-0.1, 0.0], [1.0], [0.0]]


def expand(turn_values: list[list[float]]) -> list[list[float]]:
    """Per-turn values onto the tokens of MASKS (0 on tool output and padding), by a plain loop."""
    rows = []
    for mask, values in zip(MASKS, turn_values, strict=True):
        row, turn, previous = [], -1, 0
        for m in mask:
            turn += m and not previous
            row.append(values[turn] if m else 0.0)
            previous = m
        rows.append(row)
    return rows


def test_gtpo_estimator_by_hand_through_verl_compute_advantage():
    data = batch(MASKS, REWARDS, UIDS)
    out = compute_advantage(data, adv_estimator="gtpo", config=AlgoConfig(gamma=0.5))
    pooled_a = normalized(RETURNS[0] + RETURNS[1])  # group a: its 5 turns pooled
    pooled_b = normalized(RETURNS[2] + RETURNS[3])
    expected = expand([pooled_a[:3], pooled_a[3:], pooled_b[:1], pooled_b[1:]])
    torch.testing.assert_close(out.batch["advantages"], torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.batch["returns"], torch.tensor(expand(RETURNS)), atol=1e-6, rtol=0)
    # signs a reader can check at a glance: the correct last turn is the best turn of group a
    assert out.batch["advantages"][0, 7] == out.batch["advantages"].max()
    assert pooled_b[0] == pytest.approx(1.0, abs=1e-5) and pooled_b[1] == pytest.approx(-1.0, abs=1e-5)


def test_gtpo_turn_index_estimator_by_hand():
    data = batch(MASKS, REWARDS, UIDS)
    out = compute_advantage(data, adv_estimator="gtpo_turn_index", config=AlgoConfig(gamma=0.5))
    turn0_a = normalized([RETURNS[0][0], RETURNS[1][0]])
    turn1_a = normalized([RETURNS[0][1], RETURNS[1][1]])
    turn0_b = normalized([RETURNS[2][0], RETURNS[3][0]])
    expected = expand([[turn0_a[0], turn1_a[0], 0.0], [turn0_a[1], turn1_a[1]], [turn0_b[0]], [turn0_b[1]]])
    torch.testing.assert_close(out.batch["advantages"], torch.tensor(expected), atol=1e-5, rtol=0)


def test_estimator_settings_come_from_verl_algorithm_config():
    data = batch(MASKS, REWARDS, UIDS)
    plain = compute_advantage(data, adv_estimator="gtpo", config=AlgoConfig(gamma=0.5, norm_adv_by_std_in_grpo=False))
    returns_a = RETURNS[0] + RETURNS[1]
    centered = [r - statistics.fmean(returns_a) for r in returns_a]
    assert plain.batch["advantages"][0, 4].item() == pytest.approx(centered[1], abs=1e-6)
    undiscounted = compute_advantage(batch(MASKS, REWARDS, UIDS), adv_estimator="gtpo", config=AlgoConfig(gamma=1.0))
    assert undiscounted.batch["returns"][0, 0].item() == pytest.approx(-0.1 + 0.0 + 1.0)


def loop_turn_ids(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """turn_ids and turn_mask by a plain loop (independent of verl_turns)."""
    ids = torch.full_like(mask, -1)
    counts = []
    for i in range(mask.shape[0]):
        turn, previous = -1, 0
        for t in range(mask.shape[1]):
            if mask[i, t] and not previous:
                turn += 1
            if mask[i, t]:
                ids[i, t] = turn
            previous = int(mask[i, t])
        counts.append(turn + 1)
    k = max(max(counts), 1)
    return ids, torch.tensor([[j < c for j in range(k)] for c in counts])


@pytest.mark.parametrize(("name", "norm"), [("gtpo", "group"), ("gtpo_turn_index", "turn_index")])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_estimator_equals_gtpo_functions_on_random_batches(name, norm, scale_by_std):
    generator = torch.Generator().manual_seed(7)
    b, t = 12, 40
    mask = (torch.rand(b, t, generator=generator) < 0.6).long()
    mask[3] = 0  # a response with no model token
    token_rewards = torch.randn(b, t, generator=generator) * 0.1  # e.g. a per-token KL penalty ...
    uids = np.array([f"prompt-{i // 4}" for i in range(b)], dtype=object)
    turn_ids, turn_mask = loop_turn_ids(mask)
    # ... summed per turn region by a loop: from a turn's first token up to the next turn's first token
    turn_rewards = torch.zeros(turn_mask.shape)
    for i in range(b):
        owner = 0
        for pos in range(t):
            owner = int(turn_ids[i, pos]) if turn_ids[i, pos] >= 0 else owner
            turn_rewards[i, owner] += token_rewards[i, pos]
    turn_rewards = turn_rewards * turn_mask
    group_ids = torch.tensor([i // 4 for i in range(b)])
    expected = turns_to_tokens(
        gtpo_advantages(turn_rewards, turn_mask, group_ids, 0.9, norm=norm, scale_by_std=scale_by_std), turn_ids
    )
    fn = get_adv_estimator_fn(name)
    config = AlgoConfig(gamma=0.9, norm_adv_by_std_in_grpo=scale_by_std)
    advantages, _ = fn(token_level_rewards=token_rewards, response_mask=mask, index=uids, config=config)
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    assert (advantages[mask == 0] == 0).all()


def test_estimator_needs_the_group_index():
    with pytest.raises(ValueError, match="uid"):
        compute_gtpo_advantage(torch.zeros(1, 3), torch.ones(1, 3), index=None)


def test_verl_loads_the_estimator_from_the_environment_variable():
    """The mechanism a real run uses: `import verl` imports gtpo.integrations.verl in every process."""
    code = (
        "import verl, torch, numpy as np\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "fn = get_adv_estimator_fn('gtpo')\n"
        "adv, _ = fn(token_level_rewards=torch.tensor([[0., 1.], [0., 0.]]), response_mask=torch.ones(2, 2),"
        " index=np.array(['u', 'u'], dtype=object))\n"
        "print(fn.__module__, [round(x, 4) for x in adv[:, 0].tolist()])\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "gtpo.integrations.verl"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["gtpo.integrations.verl_advantage", "[1.0,", "-1.0]"]


# ---- turn records and rewards from hand-written responses ---------------------------------------------

CODE_A = "x = 6 * 7\nprint(x)"
CODE_B0 = "print(6 * 8"
CODE_B1 = "print(6 * 8)"


def call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter", "arguments": {"code": code}}) + "\n</tool_call>"


def reply(output: str) -> str:
    return (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
        + output
        + "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


# (text, is_model_text) segments of each response; uid p1 has answer 42, uid p2 has answer 7
RESPONSES = {
    "A": (
        "p1",
        [
            ("Let me compute it.\n" + call(CODE_A), 1),
            (reply("\n```output\n42\n```\n"), 0),
            ("So the product is \\boxed{42}.<|im_end|>", 1),
        ],
    ),
    "B": (
        "p1",
        [
            ("Try:\n" + call(CODE_B0), 1),
            (reply("\n```output\n  File \"<cell 1>\", line 1\nSyntaxError: '(' was never closed\n```\n"), 0),
            ("Fix it.\n" + call(CODE_B1), 1),
            (reply("\n```output\n48\n```\n"), 0),
            ("The answer is \\boxed{48}.<|im_end|>", 1),
        ],
    ),
    "C": ("p1", [("I think it is \\boxed{41}.<|im_end|>", 1)]),
    "D": (
        "p2",
        [
            ('<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(7)"\n</tool_call>', 1),
            (reply("Invalid JSON in arguments for 'code_interpreter': Expecting ',' delimiter"), 0),
            ("It is \\boxed{7}.<|im_end|>", 1),
        ],
    ),
}
ANSWERS = {"p1": "42", "p2": "7"}
# What SandboxTool records for each response: [[turn, status], ...]. D's call never reached the sandbox: verl
# answered the unparseable JSON itself, so nothing is recorded and its turn 0 reads as an unroutable call.
TOOL_CALLS = {"A": [[0, "ok"]], "B": [[0, "error"], [1, "ok"]], "C": [], "D": []}


def tokenize(tokenizer, segments):
    ids, mask = [], []
    for text, is_model in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [is_model] * len(piece)
    return ids, mask


def reward_batch(tokenizer, names=("A", "B", "C", "D"), pad_to: int | None = None) -> DataProto:
    rows = [tokenize(tokenizer, RESPONSES[n][1]) for n in names]
    width = pad_to or max(len(ids) for ids, _ in rows) + 3  # right padding, as verl pads responses
    pad = tokenizer.pad_token_id
    responses = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    masks = torch.tensor([m + [0] * (width - len(m)) for _, m in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    prompts = torch.full((len(names), 2), pad)
    uids = [RESPONSES[n][0] for n in names]
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "response_mask": masks,
            "attention_mask": torch.cat([torch.ones_like(prompts), attention], dim=1),
        },
        non_tensors={
            "uid": np.array(uids, dtype=object),
            "reward_model": np.array([{"ground_truth": ANSWERS[u]} for u in uids], dtype=object),
            "data_source": np.array(["math"] * len(names), dtype=object),
            "tool_extra_fields": np.array([{TOOL_CALLS_KEY: TOOL_CALLS[n]} for n in names], dtype=object),
        },
    )


def constant_similarity(a: list[str], b: list[str]) -> torch.Tensor:
    return torch.full((len(a), len(b)), 0.6)


def test_parse_call():
    assert parse_call("x " + call(CODE_A)) == (CODE_A, True, False)
    assert parse_call(call("```python\nprint(1)\n```")) == ("print(1)", True, False)  # fenced code unwrapped
    assert parse_call('<tool_call>{"name": "code_interpreter", "arguments": {"code": 1}}</tool_call>')[2] is True
    assert parse_call("<tool_call>{") == (None, True, True)
    assert parse_call("```python\nprint(2)\n```") == ("print(2)", True, False)  # gtpo's own protocol
    assert parse_call("no tool here \\boxed{3}") == (None, False, False)


def test_call_validity_comes_from_the_recorded_statuses_not_the_reply_text():
    # an error-looking line the program printed itself, with status ok: a valid call
    printed = ("Check it. " + call("print('ZeroDivisionError: just a string')"), "ZeroDivisionError: just a string")
    timed_out = ("Again. " + call("while True: pass"), "(nothing)")
    unroutable = (call(CODE_A).replace("code_interpreter", "python"), "Unknown function 'python'")
    never_ran = ("Last. " + call(CODE_A), "")  # the loop stopped at its turn cap before running tools
    segments = [printed, timed_out, unroutable, never_ran]
    turns = build_turns(segments, statuses_by_turn([[0, "ok"], [1, "timeout"]]))
    assert [t.exec_status for t in turns] == ["ok", "timeout", None, None]
    assert [t.invalid_call for t in turns] == [False, True, True, False]
    assert turns[2].parse_error and not turns[3].parse_error
    # several calls in one turn: the first failure decides
    assert build_turns([printed], {0: ["ok", "memory", "error"]})[0].exec_status == "memory"
    assert statuses_by_turn(None) == {}


def test_reward_tensor_on_hand_written_responses(tiny_tokenizer):
    data = reward_batch(tiny_tokenizer)
    scores, info = gtpo_reward_tensor(data, tiny_tokenizer, similarity=constant_similarity)
    # Turn rewards by hand (format_penalty = no_call_penalty = 0.1, alpha = 0.5):
    #   A: correct, valid calls                       -> [0, 1]
    #   B: syntax error on turn 0, wrong, shaped acc = 0.5 * 0.6 against A's code -> [-0.1, 0, 0.3]
    #   C: no call on turn 1 (-0.1), wrong, no code so no shaping                   -> [-0.1]
    #   D: unparseable call on turn 0 (-0.1), correct                               -> [-0.1, 1]
    expected_turns = {"A": [0.0, 1.0], "B": [-0.1, 0.0, 0.3], "C": [-0.1], "D": [-0.1, 1.0]}
    for i, name in enumerate("ABCD"):
        mask = data.batch["response_mask"][i]
        ends = [end - 1 for _, end in turn_spans(mask)]
        assert scores[i, ends].tolist() == pytest.approx(expected_turns[name], abs=1e-6)
        assert scores[i].abs().sum().item() == pytest.approx(sum(abs(v) for v in expected_turns[name]), abs=1e-6)
        assert json.loads(info[TURN_REWARDS_KEY][i]) == pytest.approx(expected_turns[name], abs=1e-6)
    assert info["acc"] == [1.0, 0.0, 0.0, 1.0]
    assert info["invalid_calls"] == [0, 1, 0, 1]
    assert info["gtpo_shaping_alpha"] == [0.0] * 4  # shaped here already: the group step must not add it again
    assert info["num_model_turns"] == [2, 3, 1, 2]


def test_reward_tensor_default_tfidf_shaping_keeps_a_near_miss_below_success(tiny_tokenizer):
    data = reward_batch(tiny_tokenizer)
    _, info = gtpo_reward_tensor(data, tiny_tokenizer)
    assert 0.0 < info["shaped_acc"][1] < 0.5  # B's code resembles A's
    assert info["shaped_acc"][2] == 0.0  # C wrote no code
    _, unshaped = gtpo_reward_tensor(data, tiny_tokenizer, settings=RewardSettings(shaping=False))
    assert unshaped["shaped_acc"] == [1.0, 0.0, 0.0, 1.0]


def test_verl_path_equals_gtpo_trainer_credit(tiny_tokenizer):
    """Reward tensor -> verl's compute_advantage('gtpo') gives what gtpo's own trainer computes
    (gtpo.method.credit.assign_credit) for the same trajectories, written here as gtpo records by hand."""
    data = reward_batch(tiny_tokenizer)
    scores, _ = gtpo_reward_tensor(data, tiny_tokenizer, similarity=constant_similarity)
    data.batch["token_level_rewards"] = scores
    out = compute_advantage(data, adv_estimator="gtpo", config=AlgoConfig(gamma=0.9))
    credit = trainer_credit(constant_similarity)
    turn_ids, _ = loop_turn_ids(data.batch["response_mask"])
    expected = turns_to_tokens(credit.turn_advantages, turn_ids)
    torch.testing.assert_close(out.batch["advantages"], expected, atol=1e-5, rtol=0)
    assert out.batch["advantages"][data.batch["response_mask"] == 0].abs().sum() == 0


# ---- verl's rollout-time reward path: reward manager + gtpo_tool_agent output --------------------------


def manager(tokenizer, **reward_kwargs) -> GTPORewardManager:
    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": None}, "reward_kwargs": reward_kwargs}})
    return GTPORewardManager(config=config, tokenizer=tokenizer, compute_score=None, reward_router_address=None)


def test_reward_manager_run_single_scores_one_trajectory_unshaped(tiny_tokenizer):
    rm = manager(tiny_tokenizer, format_penalty=0.2)
    data = reward_batch(tiny_tokenizer)
    results = [rm.loop.run_until_complete(rm.run_single(data[i : i + 1])) for i in range(4)]
    # format_penalty 0.2 from reward_kwargs; no shaping (one trajectory at a time): B's acc stays 0
    expected = {"A": [0.0, 1.0], "B": [-0.2, 0.0, 0.0], "C": [-0.1], "D": [-0.2, 1.0]}
    for result, name in zip(results, "ABCD", strict=True):
        assert json.loads(result["reward_extra_info"][TURN_REWARDS_KEY]) == pytest.approx(expected[name])
        assert result["reward_score"] == pytest.approx(sum(expected[name]))
    # what the group step needs to shape later: acc, code, the shaping still to apply
    a, b = results[0]["reward_extra_info"], results[1]["reward_extra_info"]
    assert (a["acc"], a["gtpo_code"], a["gtpo_shaping_alpha"], a["gtpo_similarity"]) == (1.0, CODE_A, 0.5, "tfidf")
    assert (b["acc"], b["gtpo_code"]) == (0.0, CODE_B0 + "\n" + CODE_B1)


def live_rollout(name, tool):
    """Response ``name`` as verl's tool agent loop would produce it with ``SandboxTool``: each parseable call
    runs in the sandbox (one session per trajectory, the status recorded in ``agent_data.extra_fields``) and
    its real reply follows the turn; D's unparseable call is answered by verl itself, without the tool."""
    uid, segments = RESPONSES[name]
    agent_data, live, turn = make_agent_data(), [], -1
    for text, is_model in segments:
        if is_model:
            turn += 1
            agent_data.assistant_turns = turn + 1  # verl counts a turn before running its tools
            code, has_call, parse_error = parse_call(text)
            live.append((text, 1))
            if has_call and not parse_error:
                response, _, _ = run(tool.execute(f"{name}-{turn}", {"code": code}, agent_data=agent_data))
                live.append((reply(response.text), 0))
        elif live[-1][1] != 0:
            live.append((text, 0))  # verl's own answer (D)
    return uid, live, agent_data.extra_fields


def live_batch(tokenizer, tool, rm):
    """Agent-loop outputs -> verl's reward call (no response mask) -> ``as_dict`` fields, per trajectory, as
    verl's v1 agent-loop worker stores them: rm_scores, response_mask, uid, extra_fields (with the reward info)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    from gtpo.integrations.verl_agent_loop import TurnRewardOutput, with_turn_spans

    stored = []
    for name in "ABCD":
        uid, segments, extra_fields = live_rollout(name, tool)
        ids, mask = tokenize(tokenizer, segments)
        output = with_turn_spans(
            AgentLoopOutput(
                prompt_ids=[1, 2],
                response_ids=ids,
                response_mask=mask,
                metrics=AgentLoopMetrics(),
                extra_fields=extra_fields,
            )
        )
        assert isinstance(output, TurnRewardOutput)
        assert output.extra_fields[TURN_SPANS_KEY] == [list(s) for s in turn_spans(mask)]
        assert output.extra_fields.get(TOOL_CALLS_KEY, []) == TOOL_CALLS[name]  # recorded by the tool itself
        # the DataProto verl's AgentLoopWorker._compute_score sends to the reward loop: no response_mask
        call_data = DataProto.from_dict(
            tensors={
                "prompts": torch.tensor([[1, 2]]),
                "responses": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids) + 2, dtype=torch.long),
            },
            non_tensors={
                "uid": np.array([uid], dtype=object),
                "reward_model": np.array([{"ground_truth": ANSWERS[uid]}], dtype=object),
                "tool_extra_fields": np.array([output.extra_fields], dtype=object),
            },
        )
        result = rm.loop.run_until_complete(rm.run_single(call_data))
        output.reward_score = result["reward_score"]
        output.extra_fields["reward_extra_info"] = result["reward_extra_info"]
        fields = output.as_dict()
        assert fields["rm_scores"].sum().item() == pytest.approx(output.reward_score, abs=1e-6)
        stored.append({**fields, "uid": uid})
    return stored


def padded(rows, key):
    width = max(len(r[key]) for r in rows)
    return torch.stack([torch.nn.functional.pad(r[key], (0, width - len(r[key]))) for r in rows])


def trainer_records():
    """The four responses as gtpo's own rollout records them (turn records, by hand)."""

    def traj(group, correct, turns):
        turns[-1].reward = float(correct)  # the math environment's reward on the last step
        return Trajectory(
            problem=Problem(id=str(group), question="", answer=""), group_id=group, turns=turns, correct=correct
        )

    return [
        traj(0, True, [Turn("", code=CODE_A, has_tool_call=True), Turn("")]),
        traj(
            0,
            False,
            [
                Turn("", code=CODE_B0, has_tool_call=True, invalid_call=True),
                Turn("", code=CODE_B1, has_tool_call=True),
                Turn(""),
            ],
        ),
        traj(0, False, [Turn("")]),
        traj(1, True, [Turn("", has_tool_call=True, parse_error=True, invalid_call=True), Turn("")]),
    ]


def trainer_credit(similarity):
    """What gtpo's own trainer assigns to ``trainer_records()`` with the settings the verl path is given."""
    return assign_credit(
        trainer_records(),
        algo="gtpo",
        gamma=0.9,
        adv_norm="group",
        scale_by_std=True,
        format_penalty=0.1,
        no_call_penalty=0.1,
        shaping=True,
        shaping_alpha=0.5,
        similarity=similarity,
    )


def test_live_path_with_group_shaping_equals_gtpo_trainer_credit(tiny_tokenizer, sandbox_tool):
    """A verl run end to end on CPU, but for the model: trajectories built like a real rollout (the tool runs
    the code and records statuses), scored one at a time by the reward manager, rm_scores placed by the agent
    loop's output, then the group step of the replay buffer (``shape_scores``, on the fields as stored) and
    verl's compute_advantage('gtpo') on the DataProto its advantage step builds. The result is gtpo's own
    ``assign_credit`` with shaping (tf-idf, alpha 0.5) on the same trajectories."""
    stored = live_batch(tiny_tokenizer, sandbox_tool, manager(tiny_tokenizer))
    unshaped = [json.loads(r["extra_fields"]["reward_extra_info"][TURN_REWARDS_KEY]) for r in stored]
    assert [pytest.approx(t) for t in unshaped] == [[0.0, 1.0], [-0.1, 0.0, 0.0], [-0.1], [-0.1, 1.0]]
    masks = padded(stored, "response_mask")
    infos = [r["extra_fields"]["reward_extra_info"] for r in stored]
    scores, metrics = shape_scores(padded(stored, "rm_scores"), masks, [r["uid"] for r in stored], infos)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": scores, "response_mask": masks},
        non_tensors={"uid": np.array([r["uid"] for r in stored], dtype=object)},
    )
    out = compute_advantage(data, adv_estimator="gtpo", config=AlgoConfig(gamma=0.9))

    credit = trainer_credit(tfidf_code_similarity)
    turn_ids, _ = loop_turn_ids(masks)
    torch.testing.assert_close(
        out.batch["advantages"], turns_to_tokens(credit.turn_advantages, turn_ids), atol=1e-5, rtol=0
    )
    # B's code resembles A's: shaped, below a success; the other rows are unchanged
    shaped_b = credit.accuracy_values[1]
    assert 0.0 < shaped_b < 0.5 and metrics["gtpo/shaped_frac"] == pytest.approx(1 / 4)
    assert metrics["gtpo/shaped_mean"] == pytest.approx(shaped_b)
    # the shaping went onto B's last turn only: row sums are the unshaped turn rewards, plus B's shaped acc
    expected_sums = [sum(t) + (shaped_b if i == 1 else 0.0) for i, t in enumerate(unshaped)]
    assert scores.sum(dim=1).tolist() == pytest.approx(expected_sums, abs=1e-6)


def test_shape_scores_by_hand():
    # two groups; u1: a success with code, a failure with code (last model token at 4), a failure without code
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    scores = torch.zeros(4, 5)
    scores[0, 1] = 1.0
    infos = [
        {"acc": 1.0, "gtpo_code": "print(1)", "gtpo_shaping_alpha": 0.5, "gtpo_similarity": "tfidf"},
        {"acc": 0.0, "gtpo_code": "print(2)", "gtpo_shaping_alpha": 0.5, "gtpo_similarity": "tfidf"},
        {"acc": 0.0, "gtpo_code": "", "gtpo_shaping_alpha": 0.5, "gtpo_similarity": "tfidf"},
        {"acc": 0.0, "gtpo_code": "print(1)", "gtpo_shaping_alpha": 0.5, "gtpo_similarity": "tfidf"},
    ]
    uids = ["u1", "u1", "u1", "u2"]  # u2: no success, nothing to compare to
    shaped, metrics = shape_scores(scores, mask, uids, infos, similarity=constant_similarity)
    expected = scores.clone()
    expected[1, 4] = 0.5 * 0.6  # alpha x sim, on row 1's last model token
    assert torch.equal(shaped, expected)
    assert metrics == {"gtpo/shaped_frac": pytest.approx(1 / 4), "gtpo/shaped_mean": pytest.approx(0.3)}
    off = [{**info, "gtpo_shaping_alpha": 0.0} for info in infos]
    assert shape_scores(scores, mask, uids, off)[0] is scores  # shaping off in the reward settings
    assert torch.equal(shape_scores(scores, mask, uids, [None] * 4)[0], scores)  # not gtpo's reward: untouched
    with pytest.raises(ValueError, match="one shaping setting"):
        shape_scores(scores, mask, uids, [infos[0], off[1], infos[2], infos[3]])


def test_agent_output_without_gtpo_rewards_keeps_verl_default():
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    from gtpo.integrations.verl_agent_loop import turn_scores, with_turn_spans

    output = with_turn_spans(
        AgentLoopOutput(
            prompt_ids=[1], response_ids=[5, 6, 7, 8], response_mask=[1, 0, 1, 1], metrics=AgentLoopMetrics()
        )
    )
    output.reward_score = 2.0
    assert output.as_dict()["rm_scores"].tolist() == [0.0, 0.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="3 turn rewards"):
        turn_scores([0.1, 0.2, 0.3], torch.tensor([1, 0, 1, 1]))


# ---- the sandbox tool ---------------------------------------------------------------------------------


def make_agent_data():
    """verl's own per-trajectory state, which its tool agent loop passes to ``execute`` as ``agent_data``."""
    from verl.experimental.agent_loop.tool_agent_loop import AgentData

    return AgentData([], None, None, None, None, {}, request_id="r", tools_kwargs={})


@pytest.fixture(scope="module")
def sandbox_tool():
    from gtpo.integrations.verl_tool import SandboxTool

    tool = SandboxTool({"type": "native", "max_workers": 2, "preload": [], "limits": {"wall_time_s": 1.0}})
    yield tool
    tool.close()


def run(coro):
    import asyncio

    return asyncio.run(coro)


def test_sandbox_tool_keeps_state_per_trajectory(sandbox_tool):
    first, second = make_agent_data(), make_agent_data()
    iid, _ = run(sandbox_tool.create())
    first.assistant_turns = 1  # verl counts the turn before running its tools
    response, reward, metrics = run(sandbox_tool.execute(iid, {"code": "x = 6 * 7\nprint(x)"}, agent_data=first))
    assert (response.text, reward, metrics["status"]) == ("\n```output\n42\n```\n", 0.0, "ok")
    first.assistant_turns = 2
    again, _, _ = run(sandbox_tool.execute("another-call", {"code": "print(x + 1)"}, agent_data=first))
    assert "43" in again.text  # same trajectory, new tool instance: the notebook state is there
    second.assistant_turns = 1
    other, _, metrics = run(sandbox_tool.execute("third-call", {"code": "print(x)"}, agent_data=second))
    assert metrics["status"] == "error" and "NameError" in other.text
    # each call's status, with its turn, is in the trajectory's extra_fields (what verl gives the reward)
    assert first.extra_fields[TOOL_CALLS_KEY] == [[0, "ok"], [1, "ok"]]
    assert second.extra_fields[TOOL_CALLS_KEY] == [[0, "error"]]
    session = sandbox_tool._trajectory_sessions[first]
    del first
    gc.collect()
    with pytest.raises(ValueError, match="unknown session"):  # closed with its trajectory
        sandbox_tool.pool.run(session, "1")


def test_sandbox_tool_timeouts_and_bad_arguments_read_as_invalid(sandbox_tool):
    trajectory = make_agent_data()
    trajectory.assistant_turns = 1
    _, _, metrics = run(sandbox_tool.execute("t", {"code": "while True: pass"}, agent_data=trajectory))
    assert metrics["status"] == "timeout"
    trajectory.assistant_turns = 2
    response, _, metrics = run(sandbox_tool.execute("t", {"source": "print(1)"}, agent_data=trajectory))
    assert metrics["status"] == "error" and "needs a string argument" in response.text
    assert trajectory.extra_fields[TOOL_CALLS_KEY] == [[0, "timeout"], [1, "error"]]
    turns = build_turns(
        [(call("while True: pass"), ""), ('<tool_call>{"name": "code_interpreter"}</tool_call>', "")],
        statuses_by_turn(trajectory.extra_fields[TOOL_CALLS_KEY]),
    )
    assert [t.invalid_call for t in turns] == [True, True]
    assert sandbox_tool.name == "code_interpreter"


def test_sandbox_tool_instance_session_is_closed_on_release(sandbox_tool):
    iid, _ = run(sandbox_tool.create())
    response, _, _ = run(sandbox_tool.execute(iid, {"code": "y = 7\nprint(y)"}))
    assert response.text == "\n```output\n7\n```\n"
    session = sandbox_tool._instance_sessions[iid]
    run(sandbox_tool.release(iid))
    with pytest.raises(ValueError, match="unknown session"):
        sandbox_tool.pool.run(session, "1")


# ---- the example config, as verl 0.9 reads it ---------------------------------------------------------

EXAMPLE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "verl")
GTPO_ADDED_KEYS = {"reward.reward_kwargs", "ray_kwargs.ray_init.runtime_env.env_vars"}
"""Keys the example adds to verl's config: gtpo's reward settings and the env var that loads gtpo."""


def leaf_keys(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix}
    keys = set()
    for key, value in node.items():
        keys |= leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


@pytest.fixture
def example_config(monkeypatch, tmp_path):
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("GTPO_VERL_DIR", os.path.abspath(EXAMPLE_DIR))
    monkeypatch.setenv("GTPO_DATA_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=os.path.abspath(EXAMPLE_DIR), version_base=None):
        return compose("gtpo_tir", overrides=["algorithm.adv_estimator=gtpo"])


def test_example_config_passes_verl_validation_and_loads_gtpo_parts(example_config):
    from hydra import compose, initialize_config_module
    from hydra.utils import get_class
    from verl.tools.tool_registry import initialize_tools_from_config
    from verl.trainer.ppo.reward import resolve_reward_manager_cls
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from gtpo.integrations.verl_agent_loop import GTPOToolAgentLoop
    from gtpo.integrations.verl_tool import SandboxTool

    cfg = example_config
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    # every key the example sets is one verl 0.9 knows (a typo would be silently ignored), except gtpo's own
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        base = OmegaConf.to_container(compose("ppo_trainer"))
    example = OmegaConf.to_container(OmegaConf.load(os.path.join(EXAMPLE_DIR, "gtpo_tir.yaml")))
    example.pop("hydra"), example.pop("defaults")
    unknown = {k for k in leaf_keys(example) - leaf_keys(base) if not any(k.startswith(a) for a in GTPO_ADDED_KEYS)}
    assert unknown == set()
    assert get_adv_estimator_fn(cfg.algorithm.adv_estimator) is compute_gtpo_advantage
    assert resolve_reward_manager_cls(cfg) is GTPORewardManager
    (tool,) = initialize_tools_from_config(cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path)
    assert isinstance(tool, SandboxTool) and tool.name == "code_interpreter" and tool._pool is None  # lazy
    assert tool.limits.wall_time_s == 5.0 and tool.max_workers == 8
    (loop,) = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert loop.name == cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    assert get_class(loop._target_) is GTPOToolAgentLoop
    with open(os.path.join(EXAMPLE_DIR, "run_gtpo_tir.sh")) as f:
        script = f.read()
    assert "-m verl.trainer.main_ppo" in script and "--config-name gtpo_tir" in script
    assert "algorithm.adv_estimator=gtpo" in script


def test_example_config_selects_the_shaping_replay_buffer(example_config):
    """verl's trainer loads and builds the custom buffer this way (PPOTrainer._build_replay_buffer)."""
    pytest.importorskip("transfer_queue")
    from verl.utils.import_utils import load_extern_type

    from gtpo.integrations.verl_sampler import GTPOReplayBuffer

    sampler = example_config.trainer.v1.sampler
    cls = load_extern_type(sampler.custom_sampler.path, sampler.custom_sampler.name)
    assert cls is GTPOReplayBuffer and example_config.trainer.v1.trainer_mode == "sync"
    kwargs = dict(
        trainer_mode="sync",
        trainer_config=example_config.trainer.v1.get("sync", {}),
        max_off_policy_threshold=sampler.max_off_policy_threshold,
        max_off_policy_strategy=sampler.max_off_policy_strategy,
        sampler_kwargs=sampler.sampler_kwargs,
        refill_fn=lambda count: None,
    )
    assert cls(**kwargs).filter_groups_metric is None
    # verl's DAPO filter settings reach the buffer through sampler_kwargs
    dapo = cls(**{**kwargs, "sampler_kwargs": {"filter_groups_metric": "acc", "train_batch_size": 4}})
    assert dapo.filter_groups_metric == "acc" and dapo.train_batch_size == 4
    assert example_config.reward.reward_kwargs.shaping is True


@pytest.mark.slow
def test_replay_buffer_shapes_sampled_groups_in_transfer_queue(tiny_tokenizer, sandbox_tool):
    """The whole group step in a real TransferQueue (Ray, about a minute): trajectories stored as verl's
    agent-loop worker stores them, sampled by GTPOReplayBuffer, read back as the trainer's advantage step reads
    them; the advantages equal gtpo's assign_credit with shaping."""
    tq = pytest.importorskip("transfer_queue")
    import ray
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from gtpo.integrations.verl_sampler import GTPOReplayBuffer

    stored = live_batch(tiny_tokenizer, sandbox_tool, manager(tiny_tokenizer))
    names = {f"p1_{i}_0": i for i in range(3)} | {"p2_0_0": 3}  # {uid}_{session}_{output}, as verl keys them
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        keys = list(names)
        fields = [
            {k: stored[names[key]][k] for k in ("uid", "rm_scores", "response_mask", "extra_fields")} for key in keys
        ]
        tq.kv_batch_put(
            keys=keys,
            partition_id="train",
            fields=list_of_dict_to_tensordict(fields),
            tags=[{"status": "success", "global_steps": 1}] * len(keys),
        )
        for uid in ("p1", "p2"):
            tq.kv_put(key=uid, partition_id="train", tag={"is_prompt": True, "status": "finished", "global_steps": 1})
        buffer = GTPOReplayBuffer(
            trainer_mode="sync",
            trainer_config={},
            max_off_policy_threshold=None,
            max_off_policy_strategy="drop",
            sampler_kwargs={},
            refill_fn=lambda count: None,
        )
        batch, metrics = buffer.sample(global_steps=1, partition_id="train", batch_size=2)
        assert sorted(batch.keys) == sorted(keys) and metrics["gtpo/shaped_frac"] == pytest.approx(1 / 4)
        # what PPOTrainer._compute_advantage reads and builds
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id="train", select_fields=["uid", "response_mask", "rm_scores"]
        )
        data = DataProto(batch=data.to_padded_tensor())
        data.batch["token_level_rewards"] = data.batch["rm_scores"]
        data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)
        out = compute_advantage(data, adv_estimator="gtpo", config=AlgoConfig(gamma=0.9))
    finally:
        tq.close()
        ray.shutdown()
    credit = trainer_credit(tfidf_code_similarity)
    rows = [names[key] for key in batch.keys]
    turn_ids, _ = loop_turn_ids(data.batch["response_mask"])
    expected = turns_to_tokens(credit.turn_advantages[rows], turn_ids)
    torch.testing.assert_close(out.batch["advantages"], expected, atol=1e-5, rtol=0)


def test_prepare_data_writes_what_verl_dataset_reads(example_config, tmp_path, tiny_tokenizer):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    source = tmp_path / "problems.jsonl"
    source.write_text('{"question": "What is 6*7?", "answer": "42"}\n{"question": "What is 2+5?", "answer": "7"}\n')
    script = os.path.join(EXAMPLE_DIR, "prepare_data.py")
    args = [sys.executable, script, "--train", str(source), "--val", str(source), "--out", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dataset = RLHFDataset(
        data_files=[str(tmp_path / "train.parquet")], tokenizer=tiny_tokenizer, config=example_config.data
    )
    item = dataset[1]
    assert item["raw_prompt"][-1] == {"role": "user", "content": "What is 2+5?"}
    assert item["reward_model"]["ground_truth"] == "7"
