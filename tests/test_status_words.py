"""One table per provider of its job status words (issue 9, item 7): each word listed once, and every word
in every table parses to the meaning the table gives it."""

import pytest

from generations.providers import PROVIDERS, ProviderError
from generations.providers.base import CANCELED, PENDING, SUCCEEDED
from tests.conftest import reply

# A job in each provider's shape with the status `word` and, for a finished one, one image on its host.
JOBS = {
    "bfl": lambda word: {
        "id": "j1",
        "status": word,
        "result": {"sample": "https://delivery-eu1.bfl.ai/1.jpeg"},
    },
    "apiframe": lambda word: {
        "id": "j1",
        "status": word,
        "result": {"images": ["https://cdn.apiframe.ai/1.png"]},
    },
    "pixeldojo": lambda word: {
        "jobId": "j1",
        "status": word,
        "output": {"images": ["https://temp.pixeldojo.ai/1.png"]},
    },
    "vtrix": lambda word: {
        "id": "j1",
        "status": word,
        "output": [{"content": [{"type": "image", "url": "https://cdn.vtrix.ai/1.jpeg"}]}],
    },
}
WORDS = [(kind, word) for kind, cls in PROVIDERS.items() for word in cls.statuses]


def test_it_has_a_table_for_every_provider_that_polls():
    assert set(JOBS) == {kind for kind, cls in PROVIDERS.items() if not cls.synchronous}
    assert all(PROVIDERS[kind].statuses for kind in JOBS)
    assert all(not cls.statuses for cls in PROVIDERS.values() if cls.synchronous)


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_it_lists_each_word_once_in_one_spelling(kind):
    table = PROVIDERS[kind].statuses
    assert all(word == word.strip().lower() for word in table)
    known = {
        SUCCEEDED,
        PENDING,
        CANCELED,
        *(code for code in vars(ProviderError).values() if isinstance(code, str)),
    }
    assert set(table.values()) <= known


@pytest.mark.parametrize("kind, word", WORDS)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_it_parses_every_word_to_its_meaning(kind, word, spelling):
    adapter = PROVIDERS[kind]("https://provider.example", "key")
    meaning = adapter.statuses[word]
    answer = reply(200, JOBS[kind](spelling(word)))
    if meaning == ProviderError.MALFORMED:
        with pytest.raises(ProviderError) as caught:
            adapter.parse_poll(answer)
        assert caught.value.code == ProviderError.MALFORMED
        return
    outcome = adapter.parse_poll(answer)
    if meaning == SUCCEEDED:
        assert outcome.state == "succeeded" and len(outcome.image_urls) == 1
    elif meaning == PENDING:
        assert outcome.state == "pending" and outcome.error is None
    elif meaning == CANCELED:
        assert outcome.state == "failed"
        assert (outcome.error.code, "cancel" in outcome.error.message) == (ProviderError.FAILED, True)
    else:
        assert outcome.state == "failed" and outcome.error.code == meaning


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_a_word_no_table_lists_keeps_polling(kind):
    adapter = PROVIDERS[kind]("https://provider.example", "key")
    assert adapter.parse_poll(reply(200, JOBS[kind]("Thinking"))).state == "pending"
