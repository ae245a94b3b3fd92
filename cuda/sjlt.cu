#include "grass/sjlt.h"
