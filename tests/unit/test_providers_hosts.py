"""Registry host patterns, per-service routers, site-added hosts, allow_hosts and PAC patterns."""

from __future__ import annotations

import re

import pytest

from spendgate.metering import providers
from spendgate.metering.providers import (
    HOST_PATTERNS,
    allow_hosts_regexes,
    anthropic,
    bedrock,
    configure_extra,
    gemini,
    openai_chat,
    openai_extra,
    openai_responses,
    parse_extra,
    route,
    site_hosts,
    vertex,
)
from spendgate.pricing.rates import catalogue_candidates


@pytest.fixture(autouse=True)
def _no_extra():
    configure_extra([])
    yield
    configure_extra([])


@pytest.mark.parametrize(
    ("host", "path", "provider", "adapter", "endpoint"),
    [
        ("bedrock-runtime.us-east-1.amazonaws.com",
         "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream", "bedrock",
         bedrock.ADAPTERS["converse-stream"], "converse-stream"),
        ("bedrock-runtime.eu-west-3.amazonaws.com:443", "/model/anthropic.claude-3-haiku/invoke", "bedrock",
         bedrock.ADAPTERS["invoke"], "invoke"),
        ("us-east5-aiplatform.googleapis.com",
         "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
         "vertex", vertex.RAW_PREDICT, "rawPredict"),
        ("aiplatform.googleapis.com",
         "/v1/projects/p1/locations/global/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
         "vertex", vertex.STREAM_GENERATE_CONTENT, "streamGenerateContent"),
        ("cloudcode-pa.googleapis.com", "/v1internal:streamGenerateContent?alt=sse", "code-assist",
         vertex.CODE_ASSIST["streamGenerateContent"], "streamGenerateContent"),
        ("contoso.openai.azure.com", "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21", "azure",
         openai_chat.AZURE_CHAT, "chat.completions"),
        ("contoso.services.ai.azure.com", "/openai/v1/responses", "azure", openai_responses.RESPONSES, "responses"),
        ("contoso.cognitiveservices.azure.com", "/openai/deployments/emb/embeddings?api-version=x", "azure",
         openai_extra.EMBEDDINGS, "embeddings"),
        ("contoso.services.ai.azure.com", "/models/chat/completions?api-version=2024-05-01-preview", "azure",
         openai_chat.AZURE_CHAT, "chat.completions"),
        ("api.githubcopilot.com", "/chat/completions", "copilot", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.enterprise.githubcopilot.com", "/responses", "copilot", openai_responses.RESPONSES, "responses"),
        ("api.individual.githubcopilot.com", "/v1/messages", "copilot", anthropic.MESSAGES, "messages"),
        ("openrouter.ai", "/api/v1/chat/completions", "openrouter", openai_chat.CHAT, "chat.completions"),
        ("api.deepseek.com", "/chat/completions", "deepseek", openai_chat.CHAT, "chat.completions"),
        ("api.deepseek.com", "/anthropic/v1/messages", "deepseek", anthropic.MESSAGES, "messages"),
        ("api.mistral.ai", "/v1/chat/completions", "mistral", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.x.ai", "/v1/responses", "xai", openai_responses.RESPONSES, "responses"),
        ("api.groq.com", "/openai/v1/chat/completions", "groq", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.together.xyz", "/v1/completions", "together", openai_extra.COMPLETIONS_PASSIVE, "completions"),
        ("api.fireworks.ai", "/inference/v1/chat/completions", "fireworks", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.openai.com", "/v1/embeddings", "openai", openai_extra.EMBEDDINGS, "embeddings"),
        ("api.openai.com", "/v1/completions", "openai", openai_extra.COMPLETIONS, "completions"),
        # billed routes that were tunnelled unmetered before (docs/security.md)
        ("eu.api.openai.com", "/v1/chat/completions", "openai", openai_chat.CHAT, "chat.completions"),
        ("us.api.openai.com", "/v1/responses", "openai", openai_responses.RESPONSES, "responses"),
        ("codestral.mistral.ai", "/v1/fim/completions", "mistral", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.mistral.ai", "/v1/fim/completions", "mistral", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("api.anthropic.com", "/v1/chat/completions", "anthropic", openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions", "gemini",
         openai_chat.CHAT_PASSIVE, "chat.completions"),
        ("generativelanguage.googleapis.com", "/v1beta/openai/embeddings", "gemini",
         openai_extra.EMBEDDINGS, "embeddings"),
    ],
)
def test_routes(host, path, provider, adapter, endpoint) -> None:
    r = route(host, path)
    assert r is not None and r.provider == provider and r.adapter is adapter and r.endpoint == endpoint


def test_tuned_gemini_models_are_metered_under_their_own_name() -> None:
    r = route("generativelanguage.googleapis.com", "/v1beta/tunedModels/my-tune-7:generateContent")
    assert r.adapter is gemini.GENERATE_CONTENT and r.extra["model"] == "tunedModels/my-tune-7"
    assert route("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:generateContent").extra[
        "model"] == "gemini-2.5-pro"
    # a step-down away from a tuned model names the catalogue model in the path
    assert gemini.GENERATE_CONTENT.with_model("/v1beta/tunedModels/t:generateContent?x=1", b"{}", "gemini-2.5-flash") \
        == ("/v1beta/models/gemini-2.5-flash:generateContent?x=1", b"{}")


def test_route_extras_carry_the_model_or_deployment() -> None:
    r = route("bedrock-runtime.us-west-2.amazonaws.com",
              "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A1234%3Ainference-profile%2Fglobal.anthropic.claude-x/converse")
    assert r.extra == {"model": "arn:aws:bedrock:us-west-2:1234:inference-profile/global.anthropic.claude-x"}
    r = route("contoso.openai.azure.com", "/openai/deployments/my%20gpt/chat/completions")
    assert r.extra == {"deployment": "my gpt"}


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("bedrock-runtime.us-east-1.amazonaws.com", "/model/x/count-tokens"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "/guardrail/g/version/1/apply"),
        ("aiplatform.googleapis.com", "/v1/projects/p/locations/l/publishers/google/models/g:countTokens"),
        ("cloudcode-pa.googleapis.com", "/v1internal:loadCodeAssist"),
        ("contoso.openai.azure.com", "/openai/deployments/d/images/generations"),
        ("api.githubcopilot.com", "/models"),
        ("openrouter.ai", "/api/v1/models"),
        ("api.groq.com", "/v1/chat/completions"),  # groq serves /openai/v1 only
    ],
)
def test_unmetered_paths_on_provider_hosts(host, path) -> None:
    r = route(host, path)
    assert r is not None and r.adapter is None and r.endpoint == "unmetered"


@pytest.mark.parametrize("host", [
    "bedrock-runtime.amazonaws.com", "bedrock-runtime.a.b.amazonaws.com", "bedrock.us-east-1.amazonaws.com",
    "aiplatform.googleapis.com.evil.net", "x.y-aiplatform.googleapis.com.evil", "openai.azure.com",
    "evil.com", "contoso.openai.azure.com.evil.net", "api.githubcopilot.com.evil", "githubcopilot.com",
    "api.a.b.githubcopilot.com", "openrouter.ai.evil", "", "a.b.api.openai.com", "api.openai.com.evil.net",
])
def test_lookalike_hosts_are_not_providers(host) -> None:
    assert route(host, "/v1/chat/completions") is None


def test_dialect_follows_the_api_not_the_host() -> None:
    assert route("us-east5-aiplatform.googleapis.com",
                 "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:rawPredict").dialect == "anthropic"
    assert route("aiplatform.googleapis.com",
                 "/v1/projects/p/locations/l/publishers/google/models/g:generateContent").dialect == "gemini"
    assert route("bedrock-runtime.us-east-1.amazonaws.com", "/model/m/converse").dialect == "bedrock"
    assert route("api.githubcopilot.com", "/v1/messages").dialect == "anthropic"
    assert route("openrouter.ai", "/api/v1/chat/completions").dialect == "openai"


def _allowed(regexes: list[str], hostport: str) -> bool:
    return any(re.search(rx, hostport) for rx in regexes)


def test_allow_hosts_cover_patterns_and_keep_the_old_hosts() -> None:
    rx = allow_hosts_regexes(include_chatgpt=False)
    assert r"^api\.anthropic\.com\.?(:\d+)?$" in rx
    assert _allowed(rx, "api.anthropic.com.:443")  # a fully qualified name is the same host
    for ok in ("bedrock-runtime.us-east-1.amazonaws.com:443", "europe-west4-aiplatform.googleapis.com:443",
               "contoso.openai.azure.com:443", "x.services.ai.azure.com", "api.business.githubcopilot.com:443",
               "openrouter.ai:443", "api.anthropic.com:443"):
        assert _allowed(rx, ok), ok
    for bad in ("bedrock-runtime.a.b.amazonaws.com:443", "evil.openai.azure.com.evil.net:443", "chatgpt.com:443",
                "s3.amazonaws.com:443"):
        assert not _allowed(rx, bad), bad
    assert _allowed(allow_hosts_regexes(include_chatgpt=True), "chatgpt.com:443")


def test_site_hosts_give_pac_globs() -> None:
    exact, globs = site_hosts(include_chatgpt=False)
    assert "api.anthropic.com" in exact and "chatgpt.com" not in exact and "openrouter.ai" in exact
    assert set(globs) == {g for g, _ in HOST_PATTERNS}


def test_site_added_hosts_route_and_price_as() -> None:
    configure_extra([parse_extra("llm.corp.example=corp-vllm:openai:deepseek"),
                     parse_extra("*.gpu.corp.example=corp-claude:anthropic@/proxy")])
    r = route("llm.corp.example", "/v1/chat/completions")
    assert r.provider == "corp-vllm" and r.adapter is openai_chat.CHAT_PASSIVE
    r = route("a1.gpu.corp.example", "/proxy/v1/messages")
    assert r.provider == "corp-claude" and r.adapter is anthropic.MESSAGES
    assert route("a1.gpu.corp.example", "/v1/messages").adapter is None
    assert catalogue_candidates("corp-vllm", "deepseek-chat") == [("deepseek", "deepseek-chat")]
    assert catalogue_candidates("corp-claude", "m") == [("corp-claude", "m")]  # overrides only
    assert _allowed(allow_hosts_regexes(False), "llm.corp.example:443")
    assert _allowed(allow_hosts_regexes(False), "b2.gpu.corp.example:443")
    configure_extra([])
    assert route("llm.corp.example", "/v1/chat/completions") is None
    assert catalogue_candidates("corp-vllm", "deepseek-chat") == [("corp-vllm", "deepseek-chat")]


@pytest.mark.parametrize("spec", ["nohost", "h=p", "h=p:soap", "*=p:openai", "*.com=p:openai", "h=p:openai@v1",
                                  "h=p:openai@/x y"])
def test_bad_extra_specs_say_why(spec) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(spec)[:8])):
        parse_extra(spec)


def test_pattern_lookups_are_cached_but_bounded() -> None:
    info = providers._pattern_provider.cache_info()
    assert info.maxsize == 4096


@pytest.mark.parametrize(("host", "path", "asks"), [
    ("api.openai.com", "/v1/chat/completions", True),
    ("openrouter.ai", "/api/v1/chat/completions", True),
    ("api.deepseek.com", "/chat/completions", True),
    ("contoso.openai.azure.com", "/openai/deployments/d/chat/completions?api-version=2024-10-21", True),
    ("contoso.openai.azure.com", "/openai/deployments/d/chat/completions?api-version=2025-01-01-preview", True),
    ("contoso.openai.azure.com", "/openai/v1/chat/completions?api-version=preview", True),
    ("contoso.openai.azure.com", "/openai/deployments/d/chat/completions?api-version=2024-02-01", False),
    ("api.githubcopilot.com", "/chat/completions", False),
    ("api.mistral.ai", "/v1/chat/completions", False),
    ("api.groq.com", "/openai/v1/chat/completions", False),
])
def test_include_usage_is_added_only_where_the_service_accepts_it(host, path, asks) -> None:
    r = route(host, path)
    info = r.adapter.parse_request(path, b'{"model": "m", "stream": true, "messages": []}')
    assert (info.rewritten_body is not None) is asks and info.drop_usage_chunk is asks


def test_groq_stream_usage_in_x_groq() -> None:
    parser = route("api.groq.com", "/openai/v1/chat/completions").adapter.stream_parser("")
    parser.feed(b'data: {"id":"c","model":"llama-3.3-70b-versatile","choices":[{"index":0,"delta":{},'
                b'"finish_reason":"stop"}],"x_groq":{"id":"req_1","usage":{"prompt_tokens":12,'
                b'"completion_tokens":34,"total_tokens":46}}}\n\ndata: [DONE]\n\n')
    r = parser.result()
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (12, 34) and r.usage_final
