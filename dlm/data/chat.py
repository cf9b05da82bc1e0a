"""Chat prompts: a conversation rendered by the tokenizer's chat template, for ``dlm chat``, ``dlm sft`` and
``dlm serve``.

A tokenizer that has a chat template (``Tokenizer.chat_template``, e.g. SmolLM2's ChatML) renders with it; one
that has none (a model trained by dlm) renders with ``DEFAULT_CHAT_TEMPLATE``: one ``Role: content`` line per
message, then ``Assistant:`` for the answer:

    User: What is 2 + 2?
    Assistant: 4

Templates run in Jinja's immutable sandbox with ``bos_token``, ``eos_token`` and ``raise_exception`` defined, as
Hugging Face renders them.
"""

from __future__ import annotations

from functools import lru_cache

from dlm.errors import DlmError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ChatTemplateError(DlmError):
    """The chat template refused or failed on a conversation."""


def _raise_exception(message):
    raise ChatTemplateError(f"the model's chat template refused the conversation: {message}")


@lru_cache(maxsize=16)
def _template(source: str):
    """A compiled template (compiling takes milliseconds: SFT renders thousands of conversations)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def render_chat(tok, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The text of a conversation (a list of {role, content}) by ``tok``'s chat template (``DEFAULT_CHAT_TEMPLATE``
    when it has none); ``add_generation_prompt`` opens the assistant's turn after the last message."""
    from jinja2 import TemplateError

    special = lambda i: "" if i is None else tok.decode([i], skip_special_tokens=False)  # noqa: E731
    try:
        return _template(tok.chat_template or DEFAULT_CHAT_TEMPLATE).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=special(tok.bos_id),
            eos_token=special(tok.eos_id),
        )
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template failed on these messages: {e}") from None


def split_turn(tok, messages: list[dict]) -> tuple[str, str]:
    """(prompt, response) texts of a conversation whose last message is the assistant's: the prompt is everything
    before it with the assistant's turn opened, the response what the template adds for that last message (its
    content and the template's end of turn, e.g. ``<|im_end|>``)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise DlmError("the last message of a training conversation must be the assistant's (the response)")
    prompt = render_chat(tok, messages[:-1], add_generation_prompt=True)
    full = render_chat(tok, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise DlmError(
            "the chat template does not render the conversation as its prompt followed by the answer; "
            "use {'prompt': ..., 'response': ...} records with --set sft.template=raw"
        )
    return prompt, full[len(prompt) :]
