"""Request and response bodies of the HTTP API (pydantic models; FastAPI turns violations into 422).

Every bound is enforced here so that a request that reaches the engine is always decodable.
The models are strict: ``"5"`` is not a number and ``true`` is not 1; as in JSON Schema, an
integer may be written ``5.0`` but not ``5.5``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from model.decoding import (
    MAX_ANTI_LM_WEIGHT,
    MAX_REPETITION_PENALTY,
    READABLE,
    DecodingOptions,
)
from model.reranking import RANKED, RerankMethod, RerankOptions

MAX_TURN_CHARS = 1000
MAX_SPEAKER_CHARS = 32
MAX_SAMPLES = 32
MAX_LENGTH = 60
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1
MAX_DRAWS = 128  # latent samples per request at most, candidates and redraws included


def _integral(value):
    """JSON Schema's integers include 5.0; strict pydantic would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]

Speaker = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_SPEAKER_CHARS,
        description='Who said the turn ("A", "B", or any other name).',
        examples=["A"],
    ),
]


# One field on /respond and, as an extra body field, on /v1/chat/completions.
AntiLMWeight = Annotated[
    float,
    Field(
        ge=0.0,
        le=MAX_ANTI_LM_WEIGHT,
        allow_inf_nan=False,
        description="MMI-antiLM decoding (Li et al. 2016): at every word, subtract this times "
        "the log-probability of the word after an empty conversation, so that words which "
        "would follow anything lose to words that follow this conversation (0: off; near "
        f"{MAX_ANTI_LM_WEIGHT:g} the replies fall apart). Decodes twice the rows.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Turn(_Strict):
    speaker: Speaker
    text: str = Field(
        max_length=MAX_TURN_CHARS,
        description="What was said. Normalized like the training data (lower case, no "
        "punctuation, fillers uh/um dropped); words outside the vocabulary become <unk>.",
        examples=["Do you have any pets?"],
    )


class RerankFields(BaseModel):
    """How the responses are chosen among the latent samples drawn (model/reranking.py); the
    same fields on /respond and, as extra body fields, on /v1/chat/completions."""

    rerank: RerankMethod = Field(
        default=RANKED.method,
        description="How the candidates are ranked by fit to the conversation. none: the first "
        "distinct responses drawn; likelihood: the decoder's log-probability per token; "
        "posterior: agreement of the recognition network's z, given the response, with the "
        "prior's (-KL); mmi: maximum mutual information, log p(r|c) - mmi_weight * log p(r), "
        "with p(r) the model's given an empty conversation (Li et al. 2016). Every response "
        "is distinct from the others whichever the method.",
    )
    candidates: Integer = Field(
        default=RANKED.candidates,
        ge=0,
        le=MAX_DRAWS,
        description="Latent samples drawn at first, the candidates reranked (0: twice the "
        "responses asked for; fewer than asked for: as many as asked for; rerank=none draws "
        "as many as asked for).",
    )
    max_draws: Integer = Field(
        default=0,
        ge=0,
        le=MAX_DRAWS,
        description="At most this many latent samples in all: further ones are drawn while "
        "responses repeat (0: 4 per response asked for, at least `candidates`). When they run "
        "out, fewer responses come back and `sampling.warning` says so.",
    )
    mmi_weight: float = Field(
        default=RANKED.mmi_weight,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="rerank=mmi: the weight of log p(r), how much generic replies are held "
        "back (0: likelihood alone, 1: pointwise mutual information).",
    )
    diversity: float = Field(
        default=RANKED.diversity,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Maximal marginal relevance: how much a response's word overlap with the "
        "ones chosen before it counts against it (0: by fit alone).",
    )
    short_reply_tokens: Integer = Field(
        default=RANKED.short_reply_tokens,
        ge=0,
        le=MAX_LENGTH,
        description="For `diversity`: responses of at most this many tokens count as alike "
        'whatever their words ("yeah", "oh" and "okay" are one kind of reply), so a second '
        'short one is held back like a near copy (0: word overlap alone). "uh-huh" is 3 '
        "tokens (uh - huh), \"don't\" 3 (don ' t).",
    )

    def rerank_options(self) -> RerankOptions:
        return RerankOptions.of(self)


class RespondRequest(RerankFields, _Strict):
    conversation: list[Turn] = Field(
        description="The turns so far, oldest first (may be empty: the opening line); as many "
        "as the request body's size limit allows. Only the last turns that fit the model's "
        "context window (10 for the shipped checkpoint) are read.",
    )
    responder: Speaker | None = Field(
        default=None,
        description="Who answers; default: the speaker other than the last turn's "
        '("B" for an empty conversation).',
    )
    num_samples: Integer = Field(
        default=5, ge=1, le=MAX_SAMPLES, description="How many responses (each its own z)."
    )
    max_length: Integer = Field(
        default=40, ge=1, le=MAX_LENGTH, description="Most words per response."
    )
    decoding: Literal["greedy", "sample"] = Field(
        default="greedy",
        description="greedy: the most likely word at each step given z (the diversity comes "
        "from z); sample: words drawn from the softmax at `temperature`.",
    )
    temperature: float = Field(
        default=1.0,
        ge=MIN_TEMPERATURE,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="Softmax temperature for decoding='sample' (ignored by greedy). Lower is "
        f"closer to greedy; {MIN_TEMPERATURE} at least, as logits divided by much smaller "
        "numbers overflow float32.",
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)] | None = Field(
        default=None,
        description="Makes the responses reproducible: the same request with the same seed "
        "gives the same responses (on the same device and checkpoint).",
    )
    # The defaults are model.decoding.READABLE; all 0 / 1.0 / true is the papers' plain decoding.
    no_repeat_ngram_size: Integer = Field(
        default=READABLE.no_repeat_ngram_size,
        ge=0,
        le=MAX_LENGTH,
        description="No n-gram of this many tokens appears twice in a response (0: off).",
    )
    repetition_penalty: float = Field(
        default=READABLE.repetition_penalty,
        ge=1.0,
        le=MAX_REPETITION_PENALTY,
        allow_inf_nan=False,
        description="Tokens already in the response are made less likely by this factor "
        "(CTRL's penalty on the logits; 1.0: off).",
    )
    top_k: Integer = Field(
        default=READABLE.top_k,
        ge=0,
        description="decoding='sample': draw from the k most likely tokens only (0: all).",
    )
    top_p: float = Field(
        default=READABLE.top_p,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="decoding='sample': draw from the most likely tokens whose probability "
        "adds up to top_p (nucleus sampling; 1.0: all).",
    )
    allow_unk: bool = Field(
        default=READABLE.allow_unk,
        description="Whether a response may contain <unk> (a word outside the vocabulary).",
    )
    anti_lm_weight: AntiLMWeight = READABLE.anti_lm_weight

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "conversation": [
                        {"speaker": "A", "text": "Do you have any pets?"},
                        {"speaker": "B", "text": "Yeah, we have two dogs."},
                    ],
                    "num_samples": 5,
                    "max_length": 40,
                    "decoding": "greedy",
                    "temperature": 1.0,
                    "seed": None,
                }
            ]
        },
    )

    def decoding_options(self) -> DecodingOptions:
        return DecodingOptions.of(self)


class SampledResponse(BaseModel):
    text: str = Field(
        description="The response for display: the model's tokens joined back into words "
        "(may be empty)."
    )
    log_prob: float | None = Field(
        description="Sum of the model's log-probabilities of the chosen tokens (and </s>), "
        "given the sampled z: its own, not those the penalties and top-k/top-p changed (only "
        "<unk>, when not allowed, is left out); null if not finite."
    )
    num_tokens: int = Field(description="Tokens generated (</s> not counted).")
    fit: float | None = Field(
        default=None,
        description="The reranking method's score of the response's fit to the conversation "
        "(higher fits better; comparable within one request only); null for rerank=none.",
    )


class SamplingReport(BaseModel):
    """How many latent samples were drawn for the responses, and whether they were enough."""

    requested: int = Field(description="Responses asked for.")
    returned: int = Field(description="Distinct responses returned.")
    drawn: int = Field(description="Latent samples drawn (candidates and redraws).")
    distinct: int = Field(description="Distinct responses among them.")
    rerank: str = Field(description="How the responses were ranked.")
    warning: str | None = Field(
        default=None, description="Set when fewer distinct responses than asked for were found."
    )


class InputReport(BaseModel):
    """What the model read of the conversation, and how much of it it could not read."""

    turns: int = Field(description="Turns in the request.")
    turns_read: int = Field(description="The last turns, those the model reads (its context).")
    tokens: int = Field(description="Tokens read from those turns.")
    unknown_tokens: int = Field(description="Of these, tokens outside the vocabulary (<unk>).")
    unreadable: int = Field(
        description="Pieces of text dropped: runs of letters or digits outside a-z and 0-9 "
        "(other scripts, accents), emoji and other symbols."
    )
    unknown_rate: float = Field(
        description="(unknown_tokens + unreadable) / (tokens + unreadable); 0 for no input."
    )
    warning: str | None = Field(description="Set when most of the input could not be read.")


class ModelSummary(BaseModel):
    name: str = Field(description="The checkpoint directory's name.")
    variant: str
    device: str


class RespondResponse(BaseModel):
    responses: list[SampledResponse] = Field(
        description="Pairwise distinct responses, best fit first (fewer than asked for only "
        "when the draws ran out: see `sampling`)."
    )
    responder: str
    sampling: SamplingReport
    input: InputReport
    model: ModelSummary


class Status(BaseModel):
    status: str
    error: str | None = None


class Info(BaseModel):
    variant: str
    checkpoint: str | None
    device: str
    vocab_size: int
    dims: dict[str, int]
    max_context: int
    max_utt_len: int
    parameters: int
    metadata: dict
    engine: dict | None = None  # --info-detail full
    limits: dict[str, int | float]


class ErrorDetail(BaseModel):
    detail: str


LIMITS: dict[str, int | float] = {
    "max_turn_chars": MAX_TURN_CHARS,
    "max_samples": MAX_SAMPLES,
    "max_length": MAX_LENGTH,
    "min_temperature": MIN_TEMPERATURE,
    "max_temperature": MAX_TEMPERATURE,
}


# --- the OpenAI-compatible API (service/openai_api.py) -----------------------------------------
# As OpenAI's API does, a field it does not define is refused (400, "Unrecognized request
# argument supplied"). Of those it defines, what this model can do is modelled; the rest are
# declared as UNSUPPORTED (refused when they ask for something, see service/openai_api.py) or
# IGNORED (bookkeeping that changes no response); docs/service.md lists them.


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Fields of OpenAI's request that this service accepts and ignores: they change no response.
IGNORED = (
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "metadata",
    "store",
    "service_tier",
    "prediction",
    "parallel_tool_calls",
)
# Fields of OpenAI's request this model cannot honour: refused (400) unless they ask for what it
# does anyway (their default, e.g. tool_choice "none", frequency_penalty 0).
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
    "audio",
    "modalities",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
)


class TextPart(_OpenAIRequest):
    type: Literal["text"]
    text: str


class ChatMessage(_OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="user and assistant are the conversation's two speakers (A and B); system "
        "and developer messages are accepted and ignored: this model takes no instructions."
    )
    content: str | list[TextPart] = Field(description="The text, or a list of text parts.")
    name: str | None = Field(default=None, description="Accepted and ignored.")
    # What an assistant message of a completion carries (clients send it back in the history);
    # accepted when empty, as this model never makes tool calls, refusals or audio.
    refusal: None = None
    tool_calls: Annotated[list, Field(max_length=0)] | None = None
    function_call: None = None
    audio: None = None
    annotations: Annotated[list, Field(max_length=0)] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return " ".join(part.text for part in self.content)


StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_TURN_CHARS)]
# (the bound inside the Annotated: on `Integer | None` pydantic leaves it out of the JSON Schema)
TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_integral)]


class StreamOptions(_OpenAIRequest):
    include_usage: bool = False


class ChatCompletionRequest(RerankFields, _OpenAIRequest):
    model: str = Field(description="The served model's id (GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1)
    n: Integer = Field(default=1, ge=1, le=MAX_SAMPLES, description="How many choices.")
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        allow_inf_nan=False,
        description="0: greedy decoding; above: sampling at this temperature. Omitted (with "
        "top_p omitted too): the service's default, greedy decoding given each choice's own "
        "latent z, which reads best with this model.",
    )
    top_p: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=f"Nucleus sampling (omitted: {READABLE.top_p} when sampling). 0: greedy.",
    )
    anti_lm_weight: AntiLMWeight = READABLE.anti_lm_weight
    max_tokens: TokenCount | None = Field(
        default=None,
        description=f"Most tokens per choice; this model stops at {MAX_LENGTH} whatever the "
        "value (omitted: 40).",
    )
    max_completion_tokens: TokenCount | None = Field(
        default=None, description="The newer name of max_tokens; wins when both are set."
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)] | None = None
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 sequences; a choice ends before the first of them."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    # IGNORED
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prediction: dict | None = None
    parallel_tool_calls: bool | None = None
    # UNSUPPORTED (service/openai_api.py: unsupported())
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict | None = None
    response_format: dict | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    audio: dict | None = None
    modalities: list[str] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict | None = None

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the model read of the conversation.")
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    input: InputReport = Field(description="This service's addition: what the model read.")
    sampling: SamplingReport = Field(
        description="This service's addition: the latent samples drawn for the choices."
    )


class OpenAIErrorObject(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx).")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(
        description="e.g. model_not_found, unsupported_parameter, invalid_value."
    )


class OpenAIError(BaseModel):
    """An error of the OpenAI-compatible API, in OpenAI's shape."""

    error: OpenAIErrorObject


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
