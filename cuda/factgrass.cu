#include "grass/factgrass.h"
