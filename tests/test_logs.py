"""Framework logs go to the command's log file, not the terminal; the console never cuts a name in a file."""

import io
import logging
import warnings

from rich.table import Table

from domainmona import logs
from domainmona.console import FILE_WIDTH, _Console
from domainmona.io import claim_dir


def test_records_wait_for_the_claimed_folder_and_a_run_refused_before_leaves_nothing(tmp_path, capsys):
    folder = tmp_path / 'work'
    with logs.framework_log(folder) as path:
        logging.getLogger('rasterio._env').warning('CPLE_NotSupported in driver option')
        assert not folder.exists()  # nothing made for a log line
        folder.mkdir()
        logging.getLogger('rasterio._env').warning('still checking')
        assert list(folder.iterdir()) == []  # nor written into a folder the command has not claimed
        claim_dir(folder, 'test')
        logging.getLogger('monai.transforms').info('loaded 3 volumes')
        warnings.warn('a framework deprecation', DeprecationWarning)
    records = [line for line in path.read_text().splitlines() if line[:4].isdigit()]  # each starts with its time
    assert path == folder / 'domainmona.log' and len(records) == 4
    assert 'CPLE_NotSupported' in records[0] and 'loaded 3 volumes' in records[2]
    assert 'DeprecationWarning: a framework deprecation' in records[3]
    terminal = capsys.readouterr()
    assert 'CPLE' not in terminal.out + terminal.err and f'framework log: {path}' in terminal.err.replace('\n', '')

    existing = tmp_path / 'existing'
    existing.mkdir()
    with logs.framework_log(existing):
        logging.getLogger('mmengine').warning('said before the checks refused the run')
    assert list(existing.iterdir()) == []


def test_route_drops_the_terminal_handler_unless_verbose(tmp_path):
    for verbose, terminal_kept in ((False, False), (True, True)):
        logs.set_verbose(verbose)
        logger = logging.Logger(f'mmengine-like-{verbose}')  # propagate=False loggers keep their own handlers
        logger.propagate = False
        stream = io.StringIO()
        logger.addHandler(logging.StreamHandler(stream))
        claim_dir(tmp_path / str(verbose), 'test')
        with logs.framework_log(tmp_path / str(verbose)) as path:
            logs.route(logger).warning('backbone.norm.weight is skipped since its requires_grad=False')
        assert 'requires_grad=False' in path.read_text()
        assert ('requires_grad=False' in stream.getvalue()) is terminal_kept
        logger.warning('after the command')  # the command's log is detached from the logger it routed
        assert 'after the command' not in path.read_text()
    logs.set_verbose(False)


def test_nested_logs_share_the_outer_file(tmp_path):
    claim_dir(tmp_path, 'test')
    with logs.framework_log(tmp_path) as outer:
        with logs.framework_log(tmp_path / 'inner') as inner:
            logging.getLogger('x').warning('inner record')
    assert inner == outer and 'inner record' in outer.read_text()


def test_tables_written_to_a_file_keep_every_name_whole():
    out = io.StringIO()
    console = _Console(file=out)
    table = Table()
    table.add_column('method')
    table.add_column('detail')
    refusal = 'vpt-shallow prepends prompt tokens once, before the first block, and this family ' * 3
    table.add_row('parallel-adapter', refusal)
    console.print(table)
    assert console.size.width == FILE_WIDTH
    assert 'parallel-adapter' in out.getvalue() and refusal.strip() in out.getvalue()
    assert len(out.getvalue().splitlines()) == 5  # top rule, header, rule, one row, bottom rule
