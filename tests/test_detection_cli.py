"""Bad input to `domainmona train|test dota` ends in one line on stderr and exit code 2."""

import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'domainmona.cli', *args], capture_output=True, text=True,
                          timeout=120)


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
