/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Architecture-neutral shim: BPF objects must not depend on the build host's
 * multiarch asm headers, so the committed objects are the same on every host. */
#pragma once
#include <asm-generic/types.h>
