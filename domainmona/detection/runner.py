"""The OpenMMLab frameworks' output into the command's framework log (`domainmona.logs`): mmengine's Runner
with its logger routed there and a rich progress bar on the terminal instead of mmengine's log lines, and
`quiet_frameworks` for what mmengine, mmdet and mmrotate log or print outside a Runner.

mmengine builds its logger inside `Runner.__init__` and logs the environment and the whole config through
it at once (hundreds of lines) before returning, so the handler must be swapped where the logger is built.
"""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from domainmona import logs
from domainmona.console import progress


class ProgressHook(Hook):
    """Iterations done of the schedule, with the last total loss, on rank 0's terminal."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.bar = None
        self.task = None

    def before_train(self, runner) -> None:
        if runner.rank != 0:
            return
        self.bar = progress()
        self.bar.start()
        self.task = self.bar.add_task('training', total=runner.max_iters, completed=runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.bar is None:
            return
        loss = (outputs or {}).get('loss')
        described = f'training, loss {float(loss):.3f}' if loss is not None else 'training'
        self.bar.update(self.task, completed=runner.iter + 1, description=described)

    def after_train(self, runner) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (also when training raised: a live display left running blocks the next one)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class LoggedRunner(Runner):
    """A Runner whose MMLogger writes to the open framework log instead of stdout (both under --verbose),
    showing a progress bar while it trains."""

    def build_logger(self, *args, **kwargs):
        return logs.route(super().build_logger(*args, **kwargs))

    def train(self):
        hook = ProgressHook()
        self.register_hook(hook)
        try:
            return super().train()
        finally:
            hook.close()


def quiet_frameworks() -> None:
    """Inside `framework_log`: route every mmengine logger that exists, creating the default one that
    `print_log(logger='current')` falls back to (model building, checkpoint loading), and import the mmdet
    and mmrotate modules that `print` a notice at import ("Could not import OneDL ...") into the log."""
    if not MMLogger.check_instance_created('mmengine'):
        MMLogger.get_instance('mmengine')
    for logger in list(MMLogger._instance_dict.values()):
        logs.route(logger)
    with logs.printed_to_log('mmengine.print'):
        import mmdet.datasets  # noqa: F401
        import mmdet.datasets.transforms  # noqa: F401
        import mmrotate.datasets  # noqa: F401
