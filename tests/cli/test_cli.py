import pytest

from crystalforge import read_structures, write_structures
from crystalforge.cli.main import build_parser, main
from crystalforge.testing import tiny_crystals

SUBCOMMANDS = [
    [],
    ["data"],
    ["data", "list"],
    ["data", "info"],
    ["data", "prepare"],
    ["convert"],
    ["evaluate"],
    ["models"],
    ["train"],
    ["generate"],
    ["csp"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_every_help_has_examples(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: crystalforge" in out
    if words not in ([], ["data"]):
        assert "example" in out


def test_data_info_prints_split_sizes(tmp_path, capsys):
    from tests.data.test_datasets import _write_benchmark

    _write_benchmark(tmp_path)
    assert main(["data", "info", "perov_5", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("train", "val", "test")
    }
    assert lines == {"train": "missing", "val": "5", "test": "missing"}


def test_data_info_stats_and_prepare(tmp_path, capsys):
    from tests.data.test_datasets import _write_benchmark

    _write_benchmark(tmp_path)
    assert main(["data", "info", "perov_5", "--root", str(tmp_path), "--stats", "val"]) == 0
    assert "density_g_cm3" in capsys.readouterr().out
    assert main(["data", "info", "perov_5", "--root", str(tmp_path), "--stats"]) == 0  # bare: present splits
    assert "[val] statistics (5 structures)" in capsys.readouterr().out
    assert (
        main(["data", "prepare", "perov_5", "--root", str(tmp_path), "--splits", "val", "test"]) == 1
    )  # test is missing
    captured = capsys.readouterr()
    assert "perov_5/val: 5 structures cached" in captured.out and "test split not found" in captured.err


def test_unknown_dataset_is_a_clean_error(capsys):
    assert main(["data", "info", "no_such_set"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_convert_skips_and_reports_bad_records(tmp_path, capsys):
    src = tmp_path / "in"
    for c in tiny_crystals()[:3]:
        write_structures([c], src / f"{c.material_id}.cif")
    (src / "bad.cif").write_text("data_bad\n_cell_length_a x\n")
    out = tmp_path / "all.extxyz"
    assert main(["convert", str(src), str(out)]) == 0
    captured = capsys.readouterr()
    assert "converted 3 structure(s)" in captured.out and "skipped 1" in captured.out
    assert "bad.cif" in captured.err
    assert len(read_structures(out)) == 3
    assert main(["convert", str(src), str(tmp_path / "strict.extxyz"), "--strict"]) == 1


def test_convert_to_folder_and_text(tmp_path):
    src = tmp_path / "all.extxyz"
    write_structures(tiny_crystals(), src)
    assert main(["convert", str(src), str(tmp_path / "cifs") + "/", "--to", "cif", "--symmetrize"]) == 0
    assert len(list((tmp_path / "cifs").glob("*.cif"))) == 5
    assert main(["convert", str(src), str(tmp_path / "all.txt")]) == 0
    back = read_structures(tmp_path / "all.txt")
    assert [c.formula for c in back] == [c.formula for c in tiny_crystals()]
    assert main(["convert", str(src), str(tmp_path / "dir") + "/"]) == 2  # folder output needs --to


def test_ctrl_c_anywhere_is_one_line_and_status_130(monkeypatch, capsys):
    from crystalforge.cli import main as cli_main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main.COMMANDS["models"], "run", interrupted)
    assert cli_main.main(["models"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
