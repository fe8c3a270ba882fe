"""``xe``: the XCP-ng / XenServer command-line client, speaking only the public XenAPI.

The package is a client: it imports nothing of the server.  It works against
this server and against a real XCP-ng or XenServer host alike.

Modules, one job each:

- ``connection``: options (command line, ``XE_EXTRA_ARGS``, ``~/.xe``,
  ``-pwf``), transports (HTTP, HTTPS, unix socket) and XML-RPC calls;
- ``errors``: the failures and how xe prints them;
- ``printer``: xe's record, list and ``--minimal`` output;
- ``fields``: how a field of a record is shown, set and filtered on;
- ``classes``: the CLI classes (``vm``, ``template``, ``sr``, …) and their fields;
- ``params``: the generated ``<class>-list`` and ``<class>-param-*`` commands;
- ``selectors``: VM/host/SR selection (``vm=``, ``power-state=…``, ``--multiple``);
- ``tasks``: waiting on tasks, the progress bar and Ctrl-C;
- ``operations``: the lifecycle, storage, device, network and pool commands;
- ``cmdtable``: the command table and ``xe help``;
- ``completion``: shell completion;
- ``main``: the entry point.
"""
