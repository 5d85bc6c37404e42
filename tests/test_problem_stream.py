"""The problem stream is a seeded permutation per epoch whose state resumes exactly."""

from gtpo.data.stream import ProblemStream
from gtpo.types import Problem

PROBLEMS = [Problem(id=str(i), question=f"q{i}", answer=str(i)) for i in range(7)]


def test_each_epoch_is_a_permutation():
    stream = ProblemStream(PROBLEMS, seed=3)
    first, second = stream.take(7), stream.take(7)
    assert sorted(p.id for p in first) == sorted(p.id for p in PROBLEMS)
    assert sorted(p.id for p in second) == sorted(p.id for p in PROBLEMS)
    assert [p.id for p in first] != [p.id for p in second]


def test_resume_continues_where_it_stopped():
    uninterrupted = ProblemStream(PROBLEMS, seed=5)
    expected = [p.id for p in uninterrupted.take(4) + uninterrupted.take(6)]
    first = ProblemStream(PROBLEMS, seed=5)
    head = [p.id for p in first.take(4)]
    resumed = ProblemStream(PROBLEMS, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert head + [p.id for p in resumed.take(6)] == expected
