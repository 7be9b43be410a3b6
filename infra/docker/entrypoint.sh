#!/bin/sh
# Entrypoint of the tlops worker image: make sure /project holds a project checkout, then run the command.
#
# - /project (a volume or PVC) without dvc.yaml: seed it with the project baked into the image
#   ($TLOPS_SEED, /opt/tlops) as a new git repository with one commit. Flows find the project by
#   walking up from their working directory to dvc.yaml (pipeline/project.py), and commit, tag and
#   add worktrees under /project/runs, so it must be a git repository with DVC initialised.
# - TLOPS_DVC_REMOTE (e.g. s3://tlops-dvc/store): made the default DVC remote, in .dvc/config.local
#   (not committed: run worktrees copy it), with AWS_ENDPOINT_URL as its endpoint when set (MinIO).
# Several containers may start at once on an empty volume (worker, evidently-ui, job pods): a lock
# file makes one of them seed it.
set -eu

PROJECT="${TLOPS_PROJECT:-/project}"
SEED="${TLOPS_SEED:-/opt/tlops}"

seed_project() {
    if [ -f "$PROJECT/dvc.yaml" ]; then
        return 0
    fi
    echo "tlops-entrypoint: $PROJECT has no dvc.yaml; seeding it from $SEED" >&2
    cp -a "$SEED/." "$PROJECT/"
    rm -rf "$PROJECT"/*.egg-info
    cd "$PROJECT"
    git init -q -b main
    # not project files: the seeding lock, and the lost+found of a freshly formatted volume
    printf '%s\n' /.tlops-init.lock /lost+found >> .git/info/exclude
    git add -A
    git commit -q -m "tlops project, seeded from the worker image"
}

configure_remote() {
    [ -n "${TLOPS_DVC_REMOTE:-}" ] || return 0
    cd "$PROJECT"
    dvc remote add --local --force --default store "$TLOPS_DVC_REMOTE" >/dev/null
    if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
        dvc remote modify --local store endpointurl "$AWS_ENDPOINT_URL"
    fi
}

if [ -d "$PROJECT" ] && [ -w "$PROJECT" ]; then
    (
        flock 9
        seed_project
        configure_remote
    ) 9>"$PROJECT/.tlops-init.lock"
else
    echo "tlops-entrypoint: $PROJECT is missing or not writable; not seeding it" >&2
fi

cd "$PROJECT" 2>/dev/null || true
exec "$@"
