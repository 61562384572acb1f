"""The `saeq` command: start a local stack, submit jobs, follow them, fetch their artifacts."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
import unicodedata
from pathlib import Path

import click
import yaml

from saeq.client.cli_errors import SaeqGroup
from saeq.client.client import ApiError, Client, JobFailed

CLI_RETRY_FOR_S = 5.0
"""How long a command retries an API that does not answer before it says so (SAEQ_RETRY_FOR_S):
long enough for a restarting API, short enough that a user who has none running hears it soon."""


def _client(ctx: click.Context) -> Client:
    client = Client(ctx.obj.get("url"), api_key=ctx.obj.get("api_key"))
    client.retry_for_s = float(os.environ.get("SAEQ_RETRY_FOR_S", CLI_RETRY_FOR_S))
    # What the error messages (saeq.client.cli_errors) name: the URL and whether a key was sent.
    ctx.obj.update(resolved_url=client.url, resolved_key=client.api_key is not None)
    return client


def _echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2))


LOCAL_STACK_MODULES = ("redis", "celery", "minio", "fastapi", "uvicorn", "torch", "transformers")
"""What `saeq up` and `saeq demo` run here (the API and a worker) needs beyond the base install."""


def _require_local_stack(command: str) -> None:
    """Say which extra to install, instead of a traceback from a process the stack starts."""
    missing = [m for m in LOCAL_STACK_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"`saeq {command}` runs the API and a worker on this machine, which need {', '.join(missing)}: "
            "pip install 'saeq[local]' (the base install is the client only)"
        )


@click.group(cls=SaeqGroup)
@click.version_option(package_name="saeq", prog_name="saeq")
@click.option(
    "--url",
    envvar="SAEQ_URL",
    default=None,
    help="API base URL (default: the stack `saeq up` started, else http://127.0.0.1:8000).",
)
@click.option(
    "--api-key",
    envvar="SAEQ_API_KEY",
    default=None,
    show_envvar=True,
    help="Your team's API key (default: the admin key of the stack `saeq up` started).",
)
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """saeq: queue sparse-autoencoder experiments. Errors are one line; SAEQ_DEBUG=1 shows tracebacks."""
    ctx.ensure_object(dict).update(url=url, api_key=api_key)


@main.command()
@click.option("--port", default=8000, show_default=True, help="API port on 127.0.0.1.")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="State directory (Redis data, local store, logs). Default: $SAEQ_HOME or ~/.saeq.",
)
@click.option("--redis-url", default=None, help="Use this Redis instead of starting one.")
@click.option("--store", default=None, help="file:///dir or s3://bucket (default: a directory under --home).")
@click.option("--s3-endpoint", default=None, help="host:port of MinIO/S3 for an s3:// store.")
@click.option("--s3-access-key", default=None)
@click.option("--s3-secret-key", default=None)
@click.option("--concurrency", default=1, show_default=True, help="Worker processes.")
@click.option(
    "--local-path-root",
    "local_path_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory specs may name local models and SAEs under (repeatable; default: none).",
)
def up(port, home, redis_url, store, s3_endpoint, s3_access_key, s3_secret_key, concurrency, local_path_roots) -> None:
    """Start Redis, the API, one worker and a local store; stop them with Ctrl-C."""
    _require_local_stack("up")
    from saeq.client.stack_file import forget_current_home, record_current_home
    from saeq.dev.local_stack import LocalStack, StackOptions, saeq_home, stack_info_path

    opts = StackOptions(
        home=home or saeq_home(),
        port=port,
        redis_url=redis_url,
        store=store,
        s3_endpoint=s3_endpoint,
        s3_access_key=s3_access_key,
        s3_secret_key=s3_secret_key,
        worker_concurrency=concurrency,
        local_path_roots=[str(r) for r in local_path_roots] or None,
    )
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    with LocalStack(opts) as stack:
        record_current_home(opts.home)  # so `saeq status` finds a stack under --home too
        # No secret on stdout (a terminal log, a CI log, a shared tmux): only where they are.
        click.echo(
            f"saeq is up: API {stack.url} (docs {stack.url}/docs), Redis {stack.redis_url_shown()}, "
            f"logs {stack.logs}. Ctrl-C stops it.\n"
            f"Its admin key is `api_key` in {stack_info_path(opts.home)} (readable by you only; the saeq "
            f"command and saeq.Client use it on this machine); `saeq keys create TEAM` makes keys for teams.\n"
            f"Feature browser: {stack.url}/browse (sign in with that key)"
        )
        try:
            while not stop["now"]:
                for name, proc in stack.procs.items():
                    if proc.poll() is not None:
                        raise click.ClickException(f"{name} exited ({proc.returncode}); see {stack.logs}/{name}.log")
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            forget_current_home(opts.home)
        click.echo("stopping")


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--depends-on", multiple=True, help="Job id that must succeed first (repeatable).")
@click.option("--idempotency-key", default=None)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job with a progress bar.")
@click.pass_context
def submit(ctx, spec_file: Path, depends_on, idempotency_key, wait_) -> None:
    """Submit a job from a YAML/JSON file: a spec (with `kind`) or {spec, depends_on, name}."""
    try:
        doc = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as e:
        raise click.ClickException(f"{spec_file}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise click.ClickException(f"{spec_file}: expected a mapping with a `kind` or a `spec`")
    spec = doc.get("spec", doc)
    deps = list(doc.get("depends_on", [])) + list(depends_on)
    client = _client(ctx)
    try:
        job = client.submit(spec, depends_on=deps, name=doc.get("name"), idempotency_key=idempotency_key)
    except ApiError as e:
        if e.status not in (400, 422):
            raise  # not the file's fault: the one-line message of saeq.client.cli_errors
        raise click.ClickException(f"{spec_file}: {e}") from None
    click.echo(job["id"])
    if wait_:
        _wait(client, job["id"])


@main.command()
@click.argument("job_id", required=False)
@click.option("--kind", default=None)
@click.option("--state", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, job_id, kind, state, limit, as_json) -> None:
    """Show one job, or list recent jobs."""
    client = _client(ctx)
    if job_id:
        job = client.get(job_id)
        if as_json:
            click.echo(json.dumps(job, indent=2))
            return
        _print_job(job)
        return
    jobs = []
    for job in client.list(kind=kind, state=state, limit=limit):
        jobs.append(job)
        if len(jobs) >= limit:
            break
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    click.echo(f"{'id':32}  {'kind':8}  {'state':9}  {'progress':>8}  name")
    for job in jobs:
        click.echo(
            f"{job['id']:32}  {job['kind']:8}  {job['state']:9}  "
            f"{100 * job['progress']['fraction']:7.1f}%  {printable(job['name'] or '')}"
        )


def printable(text: str) -> str:
    """`text` with control and format characters escaped (`\\x1b`, `\\u202e`): a job's name or
    message is anyone's text, and a terminal would obey the escapes in it."""
    return "".join(
        c
        if c.isprintable() and unicodedata.category(c) != "Cf"
        else f"\\x{ord(c):02x}"
        if ord(c) < 0x100
        else f"\\u{ord(c):04x}"
        for c in text
    )


@main.command()
@click.option("--team", default=None, help="Whose ended jobs (default: every team's).")
@click.option(
    "--older-than",
    type=float,
    default=0.0,
    show_default=True,
    help="Only jobs that ended more than this many seconds ago.",
)
@click.pass_context
def purge(ctx, team, older_than) -> None:
    """(admin) Delete ended jobs' records now, before their retention ends; artifacts stay."""
    out = _client(ctx).purge(team=team, ended_before=time.time() - older_than if older_than else None)
    click.echo(
        f"purged {out['purged']} ended job{'s' if out['purged'] != 1 else ''}{f' of team {team}' if team else ''}"
    )


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None)
@click.pass_context
def wait(ctx, job_id, timeout) -> None:
    """Wait for a job with a progress bar; exit 1 unless it succeeded."""
    _wait(_client(ctx), job_id, timeout)


@main.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.pass_context
def logs(ctx, job_id, follow, as_json) -> None:
    """Print the job's events (phases, progress messages, failures)."""
    client = _client(ctx)
    after = "0-0"
    while True:
        for ev in client.events(job_id, after=after):
            after = ev["id"]
            if as_json:
                click.echo(json.dumps(ev))
                continue
            stamp = time.strftime("%H:%M:%S", time.localtime(ev["t"]))
            click.echo(f"{stamp}  {printable(ev['phase']):10}  {printable(ev['message'])}")
        if not follow or client.get(job_id)["state"] in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(1)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def artifacts(ctx, job_id, as_json) -> None:
    """List a job's artifacts with sizes and download URLs."""
    arts = _client(ctx).artifacts(job_id)
    if as_json:
        return _echo_json(arts)
    click.echo(f"published: {arts['published']}  manifest: {arts['manifest_key']}")
    for a in arts["artifacts"]:
        click.echo(f"{a['size']:>12,}  {a['key']}\n              {a['url']}")


@main.command()
@click.argument("job_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--prefix", default="", help="Only artifacts under this path (relative to the job).")
@click.pass_context
def download(ctx, job_id, dest, prefix) -> None:
    """Download a job's artifacts into DEST/."""
    for path in _client(ctx).download(job_id, dest / job_id, prefix=prefix):
        click.echo(str(path))


@main.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx, job_id) -> None:
    """Cancel a job (a running one stops within seconds)."""
    job = _client(ctx).cancel(job_id)
    click.echo(f"{job_id}: {job['state']}{' (stopping)' if job['state'] == 'running' else ''}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluate job's manifest as JSON.")
@click.pass_context
def report(ctx, job_id, as_json) -> None:
    """Print the summary table of an evaluate job's report."""
    from saeq.client.report import summary_table

    manifest = _client(ctx).manifest(job_id)
    if manifest.get("kind") != "evaluate":
        raise click.ClickException(f"job {job_id} is a {manifest.get('kind')} job; `report` reads evaluate jobs")
    if as_json:
        return _echo_json(manifest)
    click.echo(f"evaluation of SAE {manifest['sae']['name']} ({manifest['sae']['source']}) at {manifest['hook']}")
    click.echo(summary_table(manifest["metrics"], manifest.get("intervals")))
    c = manifest["counts"]
    click.echo(f"\n{c['n_ordinary']:,} ordinary tokens; {c['n_sinks_excluded']:,} attention sinks left out")
    if manifest.get("checks"):
        from saeq.client.report import checks_lines

        click.echo("\n" + "\n".join(checks_lines(manifest["checks"])))
    if manifest.get("comparison"):  # an evaluate job with compare_with: A against B, metric by metric
        from saeq.client.cli_compare import compare_table

        click.echo("\ncompared with B on the same contexts:\n" + compare_table(manifest["comparison"]))
    click.echo(f"report: {manifest['report_key']}")


@main.command()
@click.argument("job_id")
@click.option("--limit", default=50, show_default=True, help="Features shown.")
@click.option("--json", "as_json", is_flag=True, help="The label records (labels.jsonl) as a JSON list.")
@click.pass_context
def labels(ctx, job_id, limit, as_json) -> None:
    """Print a label job's labels and their detection scores, per explainer."""
    from saeq.client.report import density_bins_table, judge_controls_lines, labels_summary, labels_table

    client = _client(ctx)
    manifest = client.manifest(job_id)
    if manifest.get("kind") != "label":
        raise click.ClickException(f"job {job_id} is a {manifest.get('kind')} job; `labels` reads label jobs")
    records = client.labels(job_id)
    if as_json:
        return _echo_json(records[:limit])
    click.echo(labels_table(records, limit=limit))
    click.echo("\n" + labels_summary(manifest["summary"]))
    click.echo("\n".join(judge_controls_lines(manifest.get("judge_controls"))))
    click.echo("\n" + density_bins_table(manifest.get("density_bins")))


@main.command()
@click.argument("label_job")
@click.argument("query")
@click.option("--top", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search(ctx, label_job, query, top, as_json) -> None:
    """Features of a label job whose labels mean what QUERY says (to pick features to steer)."""
    hits = _client(ctx).search_labels(label_job, query, top=top)
    if as_json:
        return _echo_json(hits)
    for h in hits:
        click.echo(f"{h['feature']:6d}  {h['similarity']:.3f}  {h['label']}  ({h['explainer']})")


@main.command()
@click.argument("train_job")
@click.argument("prompt")
@click.option("--feature", "-f", type=int, multiple=True, required=True, help="SAE latent (repeatable).")
@click.option("--mode", type=click.Choice(["add", "clamp", "ablate", "scale"]), default="clamp", show_default=True)
@click.option(
    "--value", type=float, default=10.0, show_default=True, help="add: coefficient; clamp: activation; scale: factor."
)
@click.option("--sae-name", default=None, help="Which SAE of the train job (default: the first).")
@click.option("--tokens", default=32, show_default=True)
@click.pass_context
def steer(ctx, train_job, prompt, feature, mode, value, sae_name, tokens) -> None:
    """Generate after PROMPT with features of a trained SAE edited; print the default beside it."""
    body = {
        "sae": {"job_id": train_job, "name": sae_name},
        "prompt": prompt,
        "max_new_tokens": tokens,
        "interventions": [{"feature": f, "mode": mode, "value": value} for f in feature],
    }
    from saeq.client.report import steer_figures_line

    out = _client(ctx).steer(body)
    click.echo(f"default: {out['default']}\nsteered: {out['steered']}")
    click.echo(steer_figures_line(out))


@main.command()
@click.option("--tokens", default=262_144, show_default=True, help="Harvest token budget.")
@click.option("--train-tokens", default=2_457_600, show_default=True, help="SAE training tokens (token-steps).")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def demo(tokens, train_tokens, home) -> None:
    """The offline demo, end to end: harvest layer 15 of SmolLM2 on English Wikipedia, train a
    TopK SAE on it, evaluate it on held-out articles."""
    _require_local_stack("demo")
    from saeq.dev.demo import quiet_library_bars, run_demo

    quiet_library_bars()

    run_demo(tokens=tokens, train_tokens=train_tokens, home=home)


def _wait(client: Client, job_id: str, timeout: float | None = None) -> dict:
    client.get(job_id)  # a wrong id or an API that is not there: said now, not waited on forever
    try:
        job = client.wait(job_id, progress=True, timeout=timeout)
    except JobFailed as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    _print_job(job)
    return job


def _print_job(job: dict) -> None:
    p = job["progress"]
    click.echo(
        f"job {job['id']}  {job['kind']}  {job['state']}  ({p['phase']}, {100 * p['fraction']:.1f}%)"
        f"{'  ' + printable(job['name']) if job.get('name') else ''}"
    )
    if p["figures"]:
        click.echo("  " + "  ".join(f"{k}={v:,.4g}" for k, v in p["figures"].items()))
    if job["error"]:
        e = job["error"]
        click.echo(f"  error: {e['code']}{' (' + e['field'] + ')' if e['field'] else ''}: {printable(e['message'])}")
    if job["manifest_key"]:
        click.echo(f"  manifest: {job['manifest_key']}")


from saeq.client.cli_teams import keys, teams, whoami  # noqa: E402  (they use the group above)

main.add_command(keys)
main.add_command(teams)
main.add_command(whoami)

from saeq.client.cli_uploads import uploads  # noqa: E402

main.add_command(uploads)

from saeq.client.cli_plan import plan  # noqa: E402

main.add_command(plan)

from saeq.client.cli_inspect import inspect  # noqa: E402

main.add_command(inspect)

from saeq.client.cli_contrast import contrast  # noqa: E402

main.add_command(contrast)

from saeq.client.cli_compare import compare  # noqa: E402

main.add_command(compare)

if __name__ == "__main__":
    main()
