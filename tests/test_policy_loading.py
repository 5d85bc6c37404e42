"""Loading a policy on a CPU: the weights live in memory of the run's own, not in the file they came from."""

import torch

from gtpo.model.policy import load_policy


def test_loaded_weights_are_copies_not_views_of_the_file(tmp_path, tiny_tokenizer, tiny_model):
    """Rewriting the weights file in place (a writer of the same folder) must not change a loaded policy: a
    copy-on-write mapping of the file would show the new bytes in every page the run has not written yet.
    (A folder of its own, not the shared ``model_dir``: the test overwrites it.)"""
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_policy(str(tmp_path))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert any(p.abs().sum() > 0 for p in before.values())

    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    with open(weights, "r+b") as f:  # zero every tensor's bytes, same size, same inode
        f.seek(header_end)
        f.write(bytes(len(data) - header_end))

    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} follows the file"


def test_copies_keep_tied_weights_tied_and_aligned(model_dir, tiny_model):
    model, _ = load_policy(model_dir)
    tied = tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    if tied:  # one tensor: an update of the head is an update of the embedding
        with torch.no_grad():
            model.get_output_embeddings().weight[0, 0] += 1.0
        assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
