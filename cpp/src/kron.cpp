#include "grass/kron.h"
