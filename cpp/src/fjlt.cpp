#include "grass/fjlt.h"
