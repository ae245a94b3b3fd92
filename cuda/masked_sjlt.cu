#include "grass/masked_sjlt.h"
