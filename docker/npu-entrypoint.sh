#!/usr/bin/env bash
# Entry point of the Ascend images: torch_npu cannot be imported without the CANN environment
# (libhccl.so and friends on LD_LIBRARY_PATH, ASCEND_* variables), which CANN sets up in set_env.sh.
set -euo pipefail
for env in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnal/atb/set_env.sh; do
    if [ -f "$env" ]; then
        set +u  # CANN's scripts read unset variables
        # shellcheck disable=SC1090
        source "$env"
        set -u
    fi
done
exec dsa "$@"
