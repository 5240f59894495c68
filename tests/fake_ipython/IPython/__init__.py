"""A stand-in for IPython as a Jupyter kernel sees it: ``get_ipython().config`` holds ``IPKernelApp``.

Only the progress-bar test puts this folder on sys.path, to run a client as
if in a notebook (stderr then is not a terminal) without Jupyter installed.
"""


class _KernelShell:
    config = {"IPKernelApp": {}}


def get_ipython():
    return _KernelShell()
