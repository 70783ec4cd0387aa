"""``python -m tvm_tiny.firmware``: build the QEMU wincount plugin for every installed QEMU.

``scripts/setup.sh`` runs it at set-up time (run_on_board also builds the plugin on first use).
It lives here rather than behind ``python -m tvm_tiny.firmware.qemu`` because importing the
package already imports that module, which ``runpy`` would then execute a second time.
"""

from tvm_tiny.firmware.qemu import main

main()
