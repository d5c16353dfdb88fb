"""Export a checkpoint and its tokenizer as a standard HuggingFace Llama folder.

The model already uses Llama's parameter names and Llama's rotate-half RoPE (see
`minillm_core.model`), so the weights are copied unchanged; what this module writes is the
translation around them:

- `config.json`: `LlamaForCausalLM`, every shape field mapped explicitly (hidden size, the SwiGLU
  `intermediate_size` as the model computes it, query and key/value heads, `head_dim`, `rope_theta`,
  `rms_norm_eps`, `tie_word_embeddings`). Both the `rope_theta` key (transformers 4.x) and
  `rope_parameters` (5.x) are written, so neither falls back to its own default theta (10,000
  instead of our 1,000,000 would still load, and silently give other logits).
- `model.safetensors`: the checkpoint's tensors, `lm_head.weight` left out when the embeddings are
  tied (transformers re-ties it from `tie_word_embeddings`, as it does for its own tied models).
  Writing the file ourselves, rather than through `save_pretrained`, avoids the shared-tensor
  refusals users of other small-LLM projects report for tied embeddings.
- `tokenizer.json`: our tiktoken BPE rewritten for HuggingFace `tokenizers`: token bytes through
  GPT-2's bytes-to-unicode table, the merges recovered from the ranks (below), a `Split`
  pre-tokenizer with the stored pattern, `ignore_merges` (tiktoken returns a chunk that is itself a
  token without merging, and so must HF), a ByteLevel decoder, the special tokens as added tokens.
- `tokenizer_config.json`: `PreTrainedTokenizerFast`, BOS/EOS, and the Jinja chat template
  (`chat_template.jinja` in this package, written as one line) that
  renders a conversation to the same ids as `Tokenizer.render_conversation` (BOS, the system
  message folded into the first user turn, tool output, python parts), with
  `add_generation_prompt` equal to `render_for_completion`.
- `generation_config.json`: stop on `<|assistant_end|>` or `<|bos|>` (as `minillm chat` does) and
  the chat command's sampling defaults.
- `minillm_export.json`: provenance (source checkpoint, tokenizer hash, weights hash) and what the
  verification measured; `README.md`: a short model card.

Merges from ranks: tiktoken stores only `bytes -> rank`; HF's BPE needs the pair list. For each
multi-byte token in rank order, running tiktoken's own BPE on its bytes while allowing only lower
ranks ends in exactly two parts: the pair that builds it (the conversion transformers and
llama.cpp use for tiktoken vocabularies). Ordered by the rank of the result, the pair priorities
are tiktoken's. The export then re-encodes text with both tokenizers and refuses to finish if one
id differs.

Verification (when transformers is installed, `verify="auto"`): before the folder gets its final
name it is loaded with `AutoModelForCausalLM` / `AutoTokenizer` (no `trust_remote_code`) and
compared with the native model in float32: logits on a fixed batch (max |difference| must stay
under `atol`), greedy generation token by token, tokenizer ids on tricky text and on every
decodable vocabulary entry, and chat-template ids on fixed conversations. A failed check leaves the
previous export untouched. The one known difference is documented rather than hidden: HF's
tokenizer turns a literal `<|assistant_end|>` typed in text into the control token (its standard
behaviour for added tokens, needed for the chat template to work), where our `encode` keeps it as
plain text; pass `split_special_tokens=True` to a plain (non-template) HF encode to get ours.

Trade-offs: the exported folder is a plain Llama, so anything that reads Llama reads it; the cost
is that training-only settings do not carry over (our residual dropout has no Llama field, so
fine-tuning the export in transformers runs without it). Export in bfloat16/float16 halves the
file; the verification then compares against the native model rounded to the same dtype, which
checks the conversion, not the precision loss.
"""

from minillm_core.export.hf import EXPORT_META, ExportConfig, ExportReport, export_hf
from minillm_core.export.tokenizer_files import (
    ExportError,
    bytes_to_unicode,
    chat_template,
    recover_merges,
    tokenizer_json,
)
from minillm_core.export.verify import CHECK_CONVERSATIONS, verify_export

__all__ = [
    "CHECK_CONVERSATIONS",
    "EXPORT_META",
    "ExportConfig",
    "ExportError",
    "ExportReport",
    "bytes_to_unicode",
    "chat_template",
    "export_hf",
    "recover_merges",
    "tokenizer_json",
    "verify_export",
]
