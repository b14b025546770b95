/* The headers sd-xen-sys binds, in the order they need (libxl.h no longer
 * includes xenctrl.h since 4.17). */
#include <xentoollog.h>
#include <xenctrl.h>
#include <libxl.h>
#include <libxl_utils.h>
