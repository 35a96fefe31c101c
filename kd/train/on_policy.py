"""On-policy token-level distillation: continuations the student samples itself,
and the per-example mean of a token-level objective over them."""
from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from losses import DistillationObjective, ModelOutputs
from models.verbalizer import body_and_head, lm_head_logits, position_ids_from_mask


@torch.no_grad()
def sample_continuations(
    model,
    tokenizer,
    batch: Mapping[str, torch.Tensor],
    max_new_tokens: int = 8,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Student-generated continuations of the batch's prompts, for on-policy
    token-level divergences (GKD / MiniLLM's single-step term).

    Each token is drawn from ``softmax(z / temperature)`` of the model's own
    logits ``z`` (``temperature=0``: greedy), in eval mode (no LoRA dropout).
    The loop is written out rather than left to ``generate``, which would merge
    in the model's saved top-k / top-p / repetition settings and so sample
    from another distribution than the one the divergence is taken on.

    Returns, with ``T ≤ max_new_tokens`` (the loop stops once every row has
    written EOS):

    - ``input_ids``, ``attention_mask``: ``(B, S + T)``, the left-padded prompt
      and its continuation; a continuation counts up to and including its
      first EOS, and holds pad tokens after it;
    - ``loss_mask``: ``(B, S + T)`` bool, aligned with ``sequence_logits``:
      True at position t where token t+1 is a counted sampled token.

    Feed ``input_ids`` / ``attention_mask`` to ``sequence_logits`` of student
    (with grad) and teacher (without) and take the divergence where ``loss_mask``.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # New tokens go after the last column, so every prompt must end there:
    # a stable sort on the mask moves each row's pads to the front, in order.
    order = torch.argsort(batch["attention_mask"], dim=-1, stable=True)
    prompt_ids = batch["input_ids"].gather(1, order)
    mask = batch["attention_mask"].gather(1, order)
    prompt_len = prompt_ids.shape[1]

    # Newer transformers name the decoder's KV cache "cache", older ones "past_key_values"
    # (the releases: benchmarks/notes.md).
    body, _ = body_and_head(model)
    cache_name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    was_training = model.training
    model.eval()
    try:
        step_ids, step_pos, cache = prompt_ids, position_ids_from_mask(mask), None
        done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        new = []
        for _ in range(max_new_tokens):
            out = body(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                **{cache_name: cache},
            )
            cache, logits = getattr(out, cache_name), lm_head_logits(model, out.last_hidden_state[:, -1])
            if temperature > 0:
                token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
            else:
                token = logits.argmax(-1)
            counted = ~done
            token = token.masked_fill(done, pad)
            new.append(token)
            mask = torch.cat([mask, counted.long()[:, None]], dim=-1)
            done = done | (token == eos)
            if done.all():
                break
            step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
    finally:
        model.train(was_training)

    input_ids = torch.cat([prompt_ids, torch.stack(new, dim=1)], dim=1)
    loss_mask = torch.zeros_like(mask, dtype=torch.bool)
    loss_mask[:, prompt_len - 1 : -1] = mask[:, prompt_len:].bool()
    return {"input_ids": input_ids, "attention_mask": mask, "loss_mask": loss_mask}


def per_example_token_sum(
    objective: DistillationObjective, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Σ_b mean_{t : mask[b, t]} value_b,t of a token-level objective, for
    ``(B, S, V)`` logits and a ``(B, S)`` bool mask (a row with no position adds 0)."""
    values = objective.per_position(ModelOutputs(student_logits), ModelOutputs(teacher_logits), mask)  # (B, S)
    return (values.sum(-1) / mask.sum(-1).clamp(min=1)).sum()
