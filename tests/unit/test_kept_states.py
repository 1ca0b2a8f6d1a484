"""The coordinator's kept saga states: taken out while in use, bounded, oldest first out."""

from __future__ import annotations

from uuid import UUID, uuid4

from commandbus.sagas.state import SagaState
from commandbus.sagas.store import KeptStates, Loaded


def _loaded(saga_id: UUID, version: int) -> Loaded:
    state = SagaState(saga_id=saga_id, name="s", version=1, input={}, correlation_id=saga_id)
    return Loaded(state, version)


def test_a_taken_state_is_out_until_kept_again() -> None:
    kept = KeptStates(10)
    a, b = uuid4(), uuid4()
    kept.put(a, _loaded(a, 3))
    taken = kept.take([a, b])
    assert list(taken) == [a] and taken[a].version == 3
    assert kept.get(a) is None  # a concurrent group finds nothing: it loads
    assert kept.take([a]) == {}


def test_the_oldest_are_forgotten_past_the_size() -> None:
    kept = KeptStates(2)
    ids = [uuid4() for _ in range(3)]
    for i, saga_id in enumerate(ids):
        kept.put(saga_id, _loaded(saga_id, i + 1))
    assert kept.get(ids[0]) is None
    left = [kept.get(s) for s in ids[1:]]
    assert [None if k is None else k.version for k in left] == [2, 3]
