"""`tokentrail deploy PATH`: reconcile the TOKEN lines of a project's datafiles (docs/cli.md, "deploy").

By default it opens the store and deploys into a workspace of it (the only one, or --workspace);
with --host/--token it posts the files to a server's `POST /v0/deployments` instead.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tokentrail.api.cli.client import remote_client
from tokentrail.api.cli.common import (
    AsJson,
    DatabaseUrl,
    DataDir,
    RemoteHost,
    RemoteToken,
    cells,
    console,
    fail,
    open_service,
    print_json,
    progress_bar,
    say,
    table,
)


def deploy(
    path: Path = typer.Argument(..., help="The project folder holding .datasource and .pipe files."),
    check: bool = typer.Option(False, "--check", help="Only print the plan; change nothing."),
    workspace: str | None = typer.Option(
        None, "--workspace", help="The workspace to deploy into (default: the store's only workspace)."
    ),
    as_json: bool = AsJson,
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
    host: str | None = RemoteHost,
    token: str | None = RemoteToken,
) -> None:
    """Reconcile the tokens declared by TOKEN lines in a project's .datasource/.pipe files.

    Creates, changes and deletes those resource-scoped tokens; tokens made by hand are never touched.

    Example: [bold]tokentrail deploy ./my-project --check[/]
    """
    from tokentrail.domain.datafiles import read_project
    from tokentrail.domain.errors import LedgerError

    if not path.is_dir():
        fail(f"{path} is not a folder (give the project folder holding the .datasource/.pipe files)")
    api = remote_client(host, token)
    if api is not None and workspace:
        fail("--workspace is for deploying into the store; a server deploys into its token's workspace")
    with progress_bar("deploying") as bar:
        task = bar.add_task("deploy", total=3)
        try:
            files = read_project(path)
        except LedgerError as error:
            fail(error.message)
        bar.update(task, advance=1)
        if api is not None:
            answer = api.post("/v0/deployments", [("check", "true" if check else None)], body=files)
        else:
            answer = _deploy_locally(
                files, check, workspace, database_url, data_dir, lambda: bar.update(task, advance=1)
            )
        bar.update(task, completed=3)
    if as_json:
        print_json(answer)
        return
    _show(answer, len(files), check)


def _deploy_locally(
    files: dict[str, str],
    check: bool,
    workspace: str | None,
    database_url: str | None,
    data_dir: Path | None,
    opened: Any,
) -> dict[str, Any]:
    from tokentrail.domain.errors import LedgerError
    from tokentrail.domain.policy import Caller
    from tokentrail.projections.deployments import deploy as run_deploy

    service = open_service(database_url, data_dir)
    opened()
    target = _workspace(service, workspace)
    caller = replace(Caller.system(origin="cli"), workspace_id=target.id)
    try:
        result = run_deploy(service, caller, files, check)
    except LedgerError as error:
        fail(error.message)
    finally:
        service.close()
    outcome = "no_changes" if result.plan.empty else ("check" if check else "success")
    return {
        "result": outcome,
        "workspace": {"id": target.id, "name": target.name},
        "deployment": {
            "id": result.deployment_id,
            "status": "data_ready" if result.deployment_id else outcome,
            "token_changes": result.plan.token_changes,
        },
    }


def _workspace(service: Any, name: str | None) -> Any:
    if name:
        found = service.queries.workspace_by_name(name)
        if found is None:
            fail(f"no workspace named {name!r} in this store")
        return found
    workspaces = service.queries.all_workspaces()
    if not workspaces:
        fail("the store has no workspace yet: run 'tokentrail init' first")
    if len(workspaces) > 1:
        names = ", ".join(sorted(w.name for w in workspaces))
        fail(f"the store has several workspaces ({names}): pass --workspace NAME")
    return workspaces[0]


def _permissions(items: list[dict[str, Any]]) -> str:
    return "\n".join(
        ":".join(p for p in (i.get("permission"), i.get("resource_type"), i.get("resource_name")) if p) for i in items
    )


def _show(answer: dict[str, Any], file_count: int, check: bool) -> None:
    deployment = answer.get("deployment") or {}
    changes = deployment.get("token_changes") or []
    if changes:
        t = table("token", "change", "added", "removed")
        for c in changes:
            perms = c.get("permission_changes") or {}
            t.add_row(
                *cells(
                    c.get("token_name"),
                    c.get("change_type"),
                    _permissions(perms.get("added_permissions") or []),
                    _permissions(perms.get("removed_permissions") or []),
                )
            )
        console.print(t)
    where = f" into workspace {escape(answer['workspace']['name'])}" if answer.get("workspace") else ""
    if answer.get("result") == "no_changes":
        say(f"{file_count} datafiles read: the tokens already match, nothing to deploy{where}")
    elif check:
        say(f"{file_count} datafiles read: {len(changes)} token changes planned{where} (--check: nothing written)")
    else:
        say(f"deployment {deployment.get('id')}: {len(changes)} token changes applied{where}")
