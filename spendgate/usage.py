"""One normalized usage type for every provider.

Provider APIs disagree on what "input" means (Anthropic excludes cache tokens, OpenAI and Gemini
include them). Adapters translate into this one shape so pricing and budgets never need to know
which provider a row came from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # ALL input: uncached + cache reads + cache writes
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # all cache writes, 5m and 1h together
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens written with a 1h TTL
    output_tokens: int = 0  # includes reasoning / thinking
    reasoning_tokens: int = 0  # the part of output_tokens spent reasoning
    web_search_requests: int = 0
    # Tokens of a kind with its own rate (parts of the totals above; text is the rest):
    input_audio_tokens: int = 0  # part of input_tokens (cached or not)
    input_image_tokens: int = 0
    input_video_tokens: int = 0
    cache_read_audio_tokens: int = 0  # part of cache_read_tokens and of input_audio_tokens
    output_audio_tokens: int = 0  # part of output_tokens
    output_image_tokens: int = 0
    output_video_tokens: int = 0
    # Quantities billed per unit of time or text, not per token (whisper per minute, tts-1 per
    # character); they are not part of the token totals.
    audio_seconds: int = 0  # input audio duration, whole seconds (transcription, translation)
    input_characters: int = 0  # characters of input text (text-to-speech)
    # Generated media billed per image or per second of video (Imagen, dall-e; Sora, Veo)
    output_images: int = 0
    output_video_seconds: int = 0  # whole seconds, every resolution
    output_video_high_res_seconds: int = 0  # the part of output_video_seconds above 720p (Sora 2 Pro's dearer rate)

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    @property
    def cache_write_5m_tokens(self) -> int:
        return max(self.cache_write_tokens - self.cache_write_1h_tokens, 0)

    @property
    def modality_tokens(self) -> int:
        """Tokens of any non-text kind: when 0, text rates price everything."""
        return (self.input_audio_tokens + self.input_image_tokens + self.input_video_tokens
                + self.output_audio_tokens + self.output_image_tokens + self.output_video_tokens)

    def as_dict(self) -> dict[str, int]:
        # not dataclasses.asdict: that deep-copies every field, and this runs once per request
        return {name: getattr(self, name) for name in USAGE_FIELDS}


USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage))
