#include "grass/ifvp.h"
