from pathlib import Path

from transformers import CLIPTokenizer

from tessera_shapes import world
from tessera_shapes.tokenizer import MAX_LENGTH, learn_merges, write_tokenizer


def test_every_world_word_is_one_token(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(world.VOCABULARY, tmp_path)

    for word in world.VOCABULARY:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"]
    assert tokenizer.model_max_length == MAX_LENGTH


def test_folder_loads_offline_and_takes_new_tokens(tmp_path: Path) -> None:
    write_tokenizer(world.VOCABULARY, tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file()

    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    size = len(tokenizer)
    assert tokenizer.add_tokens(["<purple_star>"]) == 1
    ids = tokenizer("a <purple_star> on the left").input_ids

    assert len(tokenizer) == size + 1
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids[2] == size


def test_unknown_words_fall_back_to_letters(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(world.VOCABULARY, tmp_path)

    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a zebra", add_special_tokens=False).input_ids)

    assert tokens[0] == "a</w>"
    assert "".join(tokens[1:]).replace("</w>", "") == "zebra"


def test_learned_merges_are_stable() -> None:
    assert learn_merges(["red", "green"]) == learn_merges(["green", "red", "red"])
