# Source before a run on a lent GPU machine: its copy of the tree carries a stale .git, so the provenance of
# every record comes from these (written here, where git is right, into the tree that travels).
#   here:  bash scripts/gpu/gpu_env.sh write      -> scripts/.gpu_env (ignored by git, sent with the tree)
#   there: source scripts/.gpu_env
if [[ ${1:-} == write ]]; then
  cd "$(dirname "$0")/../.."
  dirty=0; [[ -n $(git status --porcelain --untracked-files=no) ]] && dirty=1
  printf 'export DSA_GIT_COMMIT=%s DSA_GIT_DIRTY=%s PYTHONUNBUFFERED=1\n' "$(git rev-parse HEAD)" "$dirty" > scripts/.gpu_env
  cat scripts/.gpu_env
fi
