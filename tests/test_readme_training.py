"""The README's training blocks (data sources, callbacks, two heads) run as shown, shortened."""

from readme_blocks import readme_block


def test_data_source_callbacks_and_two_heads_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = readme_block("map_batches")
    heads = readme_block("fl.losses.combine")
    code = (source + heads).replace("epochs=40", "epochs=3").replace("epochs=20", "epochs=2")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    hist = namespace["history"]
    assert list(hist) == ["epoch", "step", "loss", "accuracy", "mae", "lr"]
    assert (tmp_path / "spirals.npz").exists() and (tmp_path / "spirals.csv").exists()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "'loss'" in printed[1] and "'accuracy'" in printed[1]
