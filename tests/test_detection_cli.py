"""`domainmona train|test dota` through the console script: bad input ends in one line on stderr and exit code 2;
a run prints domainmona's lines, not the frameworks' logs."""

import subprocess
import sys

import pytest


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'domainmona.cli', *args], capture_output=True, text=True,
                          timeout=timeout)


def test_train_on_a_folder_without_data_is_one_line(tmp_path):
    (tmp_path / 'data').mkdir()
    result = run_cli('train', 'dota', '--data', str(tmp_path / 'data'), '--work-dir', str(tmp_path / 'work'),
                     '--backbone', 'micro')
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and 'expected images/ with labelTxt/' in result.stderr
    assert not (tmp_path / 'work').exists()


def test_test_with_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    bogus = tmp_path / 'model.safetensors'
    bogus.write_text('not weights')
    (tmp_path / 'scenes' / 'images').mkdir(parents=True)
    result = run_cli('test', 'dota', '--checkpoint', str(bogus), '--data', str(tmp_path / 'scenes'),
                     '--out', str(tmp_path / 'out'))
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and 'model.safetensors' in result.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_train_and_test_print_progress_and_results_while_framework_logs_go_to_the_file(tmp_path):
    """The terminal holds domainmona's lines only; mmengine's environment dump, config and per-parameter
    warnings are in WORK/domainmona.log, and `-v` brings them back to the terminal."""
    from domainmona.detection.synthetic import DOTA_NAMES, generate_dota_scenes
    from domainmona.detection.train import MICRO_WEIGHTS

    generate_dota_scenes(tmp_path / 'train', 2, 256, seed=0, objects_per_image=(4, 6), label_names=DOTA_NAMES)
    generate_dota_scenes(tmp_path / 'test', 1, 256, seed=1, prefix='test', objects_per_image=(4, 6),
                         label_names=DOTA_NAMES)
    train = ('train', 'dota', '--data', str(tmp_path / 'train'), '--backbone', 'micro', '--max-iters', '2',
             '--patch-size', '256', '--patch-gap', '64', '--pretrained', str(MICRO_WEIGHTS))
    result = run_cli(*train, '--work-dir', str(tmp_path / 'work'))
    assert result.returncode == 0, result.stderr
    terminal = (result.stdout + result.stderr).splitlines()
    log = (tmp_path / 'work' / 'domainmona.log').read_text()
    assert len(terminal) <= 12 and f"framework log: {tmp_path / 'work' / 'domainmona.log'}" in terminal
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / 'work' / 'final.safetensors')
    assert not any('requires_grad=False' in line or 'mmengine' in line for line in terminal)
    assert 'is skipped since its requires_grad=False' in log and 'Config:' in log  # moved, not lost

    tested = run_cli('test', 'dota', '--checkpoint', str(tmp_path / 'work' / 'final.safetensors'),
                     '--data', str(tmp_path / 'test'), '--out', str(tmp_path / 'out'))
    assert tested.returncode == 0, tested.stderr
    assert len((tested.stdout + tested.stderr).splitlines()) <= 8
    assert tested.stdout.strip().splitlines()[-1].endswith('task1.zip')

    verbose = run_cli('-v', *train, '--work-dir', str(tmp_path / 'work-verbose'))
    assert verbose.returncode == 0, verbose.stderr
    assert 'is skipped since its requires_grad=False' in verbose.stdout + verbose.stderr
