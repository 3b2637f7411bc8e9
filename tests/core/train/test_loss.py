"""The chunked loss reproduces transformers' own causal-LM loss and its gradients."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.train.loss import IGNORE_INDEX, TokenLossSum, chunked_cross_entropy_sum, token_losses_and_logit_grads


def _tiny_qwen3(tie: bool) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return Qwen3ForCausalLM(config).float()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 512, (2, 24), generator=generator)
    labels = input_ids.clone()
    labels[0, :5] = IGNORE_INDEX  # a masked prompt
    labels[1, 20:] = IGNORE_INDEX  # trailing padding
    return input_ids, labels


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk_tokens", [7, 1024])
def test_chunked_loss_matches_transformers_loss_and_gradients(tie: bool, chunk_tokens: int) -> None:
    input_ids, labels = _batch()
    reference = _tiny_qwen3(tie)
    chunked = _tiny_qwen3(tie)
    chunked.load_state_dict(reference.state_dict())

    expected = reference(input_ids=input_ids, labels=labels).loss
    expected.backward()
    loss_sum, count = TokenLossSum(chunked, chunk_tokens=chunk_tokens)(input_ids, labels)
    (loss_sum / count).backward()

    # Targets are labels shifted left by one: 23 + 23 positions, minus 4 masked prompt and 4 padding ones.
    assert count == 46 - 4 - 4
    torch.testing.assert_close(loss_sum / count, expected, rtol=1e-5, atol=1e-6)
    reference_grads = dict(reference.named_parameters())
    for name, parameter in chunked.named_parameters():
        torch.testing.assert_close(parameter.grad, reference_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_cross_entropy_matches_direct_formula_on_hand_sized_input() -> None:
    torch.manual_seed(3)
    hidden = torch.randn(1, 5, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 5, 0]])

    loss_sum, count = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=2)
    loss_sum.backward()
    hidden_grad, weight_grad = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logits = hidden[0, :4] @ weight.T
    expected = torch.nn.functional.cross_entropy(logits[[0, 2, 3]], torch.tensor([2, 5, 0]), reduction="sum")
    expected.backward()
    assert count == 3
    torch.testing.assert_close(loss_sum, expected)
    torch.testing.assert_close(hidden_grad, hidden.grad)
    torch.testing.assert_close(weight_grad, weight.grad)


def test_all_masked_labels_give_zero_loss_with_a_connected_graph() -> None:
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    loss_sum, count = chunked_cross_entropy_sum(hidden, torch.randn(6, 4), torch.full((1, 3), IGNORE_INDEX))
    loss_sum.backward()
    assert count == 0
    assert loss_sum.item() == 0.0
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_chunk_kernel_gives_cross_entropy_and_its_autograd_gradient() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], requires_grad=True)
    targets = torch.tensor([0, 2])

    loss, grad = token_losses_and_logit_grads(logits.detach(), targets)
    torch.nn.functional.cross_entropy(logits, targets, reduction="sum").backward()

    # Row 2 is uniform over 3 classes: loss ln 3, gradient 1/3 everywhere less 1 at the target.
    torch.testing.assert_close(grad[1], torch.tensor([1 / 3, 1 / 3, -2 / 3]))
    torch.testing.assert_close(grad, logits.grad)
    expected = torch.logsumexp(torch.tensor([2.0, 0.0, -1.0]), 0) - 2.0 + torch.log(torch.tensor(3.0))
    torch.testing.assert_close(loss, expected)


def test_loss_without_gradients_equals_the_training_loss() -> None:
    torch.manual_seed(4)
    hidden = torch.randn(2, 6, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    labels = torch.randint(0, 9, (2, 6))
    training, count = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=3)
    with torch.no_grad():
        evaluation, eval_count = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=3)
    assert count == eval_count == 10
    assert training.requires_grad and not evaluation.requires_grad
    torch.testing.assert_close(evaluation, training.detach())


@pytest.mark.parametrize("chunk_tokens", [5, 1024])
def test_token_scores_are_each_targets_loss_and_argmax_of_the_full_logits(chunk_tokens: int) -> None:
    input_ids, labels = _batch()
    model = _tiny_qwen3(tie=True)
    objective = TokenLossSum(model, chunk_tokens=chunk_tokens)

    with torch.no_grad():
        scores = objective(input_ids, labels, token_scores=True)
        loss_sum, count = objective(input_ids, labels)
        logits = model(input_ids=input_ids).logits[:, :-1].reshape(-1, 512)
    scored = labels[:, 1:].reshape(-1) != IGNORE_INDEX
    targets = labels[:, 1:].reshape(-1)[scored]

    assert len(scores.losses) == count == 38
    assert torch.equal(scores.targets, targets)
    assert torch.equal(scores.predictions, logits[scored].argmax(dim=-1))
    expected = torch.nn.functional.cross_entropy(logits[scored], targets, reduction="none")
    torch.testing.assert_close(scores.losses, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores.losses.sum(), loss_sum, rtol=1e-5, atol=1e-5)
