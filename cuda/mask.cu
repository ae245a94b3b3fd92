#include "grass/mask.h"
