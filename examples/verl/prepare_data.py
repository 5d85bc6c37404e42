"""Write verl's RL parquet files (train/val) from any problem source gtpo reads.

    python examples/verl/prepare_data.py --train path/to/train.jsonl --val path/to/val.jsonl --out DIR

Each row holds what verl's RLHFDataset and gtpo's reward manager read: the chat (``prompt``), the reference
answer (``reward_model.ground_truth``), ``data_source`` and ``extra_info.index``. Sources are anything
``gtpo.data.load.load_problems`` takes (JSONL/JSON/parquet files or an HF dataset name; needs ``gtpo[data]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SYSTEM_PROMPT = (
    "Solve the problem step by step. You can run Python code with the code_interpreter tool; its output is "
    "returned to you, and you can keep reasoning and calling it. Put the final answer in \\boxed{}."
)


def rows(source: str, question_field: str, answer_field: str, limit: int | None) -> list[dict]:
    from gtpo.data.load import load_problems

    problems = load_problems(source, question_field=question_field, answer_field=answer_field, limit=limit)
    return [
        {
            "data_source": "gtpo",
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"index": i, "problem_id": p.id},
        }
        for i, p in enumerate(problems)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training problems (file or HF dataset name)")
    parser.add_argument("--val", required=True, help="validation problems (file or HF dataset name)")
    parser.add_argument("--out", required=True, type=Path, help="directory for train.parquet and val.parquet")
    parser.add_argument("--question-field", default="question")
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--limit", type=int, default=None, help="at most this many problems per split")
    args = parser.parse_args()

    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    for split, source in (("train", args.train), ("val", args.val)):
        frame = pd.DataFrame(rows(source, args.question_field, args.answer_field, args.limit))
        frame.to_parquet(args.out / f"{split}.parquet")
        print(f"{split}: {len(frame)} problems -> {args.out / f'{split}.parquet'}")


if __name__ == "__main__":
    main()
