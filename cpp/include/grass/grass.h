// Umbrella header: everything grass_core offers.
#pragma once
#include "grass/build_info.h"
#include "grass/check.h"
#include "grass/dtype.h"
#include "grass/factgrass.h"
#include "grass/fjlt.h"
#include "grass/hash.h"
#include "grass/ifvp.h"
#include "grass/kron.h"
#include "grass/mask.h"
#include "grass/masked_sjlt.h"
#include "grass/sjlt.h"
